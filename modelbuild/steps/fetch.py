"""The ``fetch`` step: bring a model checkpoint into the build.

Sources (the ``source`` parameter):

- ``hf://org/repo``: a Hugging Face Hub repo at ``revision`` (default
  ``"main"``), limited to the glob patterns in ``files``. A branch or tag is
  resolved to its commit when the key is computed (:meth:`FetchStep.resolve`:
  a moved branch rebuilds); pin ``revision`` to a commit sha for reproducible
  builds. The commit is recorded in ``checkpoint.json`` either way. The token
  comes from ``HF_TOKEN`` or ``hf auth login`` and is never logged or stored.
  ``family`` (e.g.
  ``"smollm2"``) tells the export step which model definition to use;
  without it, it is inferred from the fetched files (for every source:
  ``config.json``'s ``model_type`` and vocabulary, a GGUF's
  ``general.architecture``), and a declared family the files contradict
  fails the step with one line naming ``family`` and the file.
- ``https://...`` (``http://`` too): one file, verified against the required
  ``sha256`` before it is stored; resumable.
- a path relative to the project root (a file or a directory, ``files``
  filtering a directory): its content enters the action key, so editing the
  files rebuilds. A snapshot of a Hugging Face cache
  (``.../models--ORG--NAME/snapshots/SHA``, symlinks into ``blobs/``) works
  too: its in-repo links are followed and ``resolved_commit`` is ``SHA``.

For hf and local directories, ``subdir`` takes the checkpoint from one
directory (``"original"`` holds the Meta files of the Llama Hub repos); its
files become the artifact's top level, where the loaders look.
- ``synthetic``: seeded random weights for ``architecture`` and ``size``, for
  demos, tests and benchmarks; the artifact says ``synthetic: true``.

The artifact: the files in their native layout plus ``checkpoint.json``::

    {"format": "hf", "family": "smollm2", "synthetic": false,
     "source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
     "revision": "main", "resolved_commit": "12fd25f...",
     "files": {"config.json": {"sha256": "...", "size": 861}, ...}}

Example recipe::

    [targets.smollm2-ckpt]
    step = "fetch"
    source = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
    files = ["*.json", "*.safetensors"]
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Literal, Mapping

from pydantic import Field

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import Params, ResolveContext, Step, StepContext

__all__ = ["FetchStep", "source_kind"]

CHECKPOINT_JSON = "checkpoint.json"
HUB_DOWNLOADS = 8  # files downloaded at once from a hub (huggingface_hub's own default)
FORMATS = ("hf", "meta", "gguf")


def source_kind(source: str) -> str:
    """``"hf"``, ``"http"``, ``"synthetic"`` or ``"local"`` for a ``source`` string.

    >>> [source_kind(s) for s in ("hf://a/b", "https://x/y.gguf", "synthetic", "ckpt/")]
    ['hf', 'http', 'synthetic', 'local']
    """
    if source.startswith("hf://"):
        return "hf"
    if source.startswith(("https://", "http://")):
        return "http"
    if source == "synthetic":
        return "synthetic"
    return "local"


def _synthetic_sizes() -> dict[str, Any] | None:
    """``modelbuild.ml.llm.synthetic.SIZES`` if that module is there, else None.

    That module keeps torch out of its module level, so this stays light.
    """
    try:
        from modelbuild.ml.llm import synthetic
    except ImportError:
        return None
    sizes = getattr(synthetic, "SIZES", None)
    return sizes if isinstance(sizes, dict) else None


class FetchStep(Step):
    """Fetch a checkpoint from the Hub, a URL, the project, or make a synthetic one."""

    name = "fetch"
    version = 1
    description = "Fetch a model checkpoint (hf://, https:// with sha256, a local path, or synthetic)"
    inputs = {}
    output = "checkpoint"
    # The Hub client decides what a revision resolves to and which files a
    # pattern selects; torch draws the synthetic weights. Either may change
    # the output with its version.
    toolchain = ("huggingface_hub", "torch")

    class Params(Params):
        source: str = Field(
            description='"hf://org/repo", "https://...", a project-relative path, or "synthetic"'
        )
        revision: str = Field(
            "main",
            description="hf: branch, tag or commit sha (pin a commit sha for reproducible builds)",
        )
        files: list[str] = Field(
            default_factory=list,
            description='hf, local directory: glob patterns of the files to take (empty = all), '
            'e.g. ["*.json", "*.safetensors"]',
        )
        sha256: str | None = Field(None, description="http(s): the expected sha256 of the file (required)")
        format: Literal["auto", "hf", "meta", "gguf"] = Field(
            "auto", description="checkpoint layout; auto detects it from the file names"
        )
        architecture: str | None = Field(None, description='synthetic: the architecture, e.g. "llama3_2", "smollm2"')
        size: str | None = Field(None, description='synthetic: the size, e.g. "tiny", "135m", "1b"')
        seed: int = Field(0, description="synthetic: the random seed of the weights")
        subdir: str | None = Field(
            None,
            description="hf, local directory: the directory holding the checkpoint, e.g. \"original\" for the "
            "Meta files of a Llama Hub repo; its files become the artifact's top level",
        )
        family: str | None = Field(
            None,
            description='the model family recorded for export, e.g. "llama3_2", "qwen3_5" (default: inferred '
            "from config.json model_type / the GGUF architecture and vocabulary; a declared family the files "
            "contradict is an error)",
        )

    # -- planning ---------------------------------------------------------

    def sources(self, params: Params) -> list[str]:
        """A local source (narrowed to ``subdir``): its content enters the action key."""
        if source_kind(params.source) != "local":
            return []
        if params.subdir is not None:
            return [(PurePosixPath(params.source) / params.subdir.strip("/")).as_posix()]
        return [params.source]

    def resolve(self, params: Params, ctx: ResolveContext) -> Params:
        """Pin a floating hf revision (a branch or tag) to the commit it names now: ``main@<commit>``.

        So the key changes when the branch moves, and the run downloads exactly
        the commit that was keyed. A 40-hex revision is pinned already and never
        resolved. The resolution is remembered for ``ctx.ttl_s`` (``--refresh``
        asks again); offline, the last one is used and a note says so.

        A local source with a declared ``family`` is checked against its files
        here, while planning (:meth:`_check_local_family`).
        """
        if source_kind(params.source) == "local" and params.family is not None:
            self._check_local_family(params, ctx.project)
        if source_kind(params.source) != "hf":
            return params
        from modelbuild.ml.hub import parse_hf_source, pinned, resolve_revision  # light until the Hub is asked

        if pinned(params.revision):
            return params
        try:
            repo = parse_hf_source(params.source)
        except ValueError:
            return params  # check() reports it
        found = resolve_revision(repo, params.revision, remember=ctx.cache, ttl_s=ctx.ttl_s, refresh=ctx.refresh)
        if found.note:
            ctx.note(f"hf://{repo}: {found.note}")
        if found.good_until_ns is not None:
            ctx.expires(found.good_until_ns)
        if found.commit is None:
            return params
        return params.model_copy(update={"revision": f"{params.revision}@{found.commit}"})

    def check(self, params: Params, input_kinds: Mapping[str, str | list[str]]) -> None:
        kind = source_kind(params.source)
        if not params.source.strip():
            raise RecipeError("source is empty", key="source")
        if kind == "local" and "://" in params.source:
            scheme = params.source.split("://", 1)[0]
            raise RecipeError(
                f"unsupported source scheme '{scheme}://' (use hf://, https://, a local path or \"synthetic\")",
                key="source",
            )
        if kind == "hf":
            from modelbuild.ml.hub import parse_hf_source  # light: no huggingface_hub import

            try:
                parse_hf_source(params.source)
            except ValueError as err:
                raise RecipeError(str(err), key="source") from None
        if kind == "http":
            if params.sha256 is None:
                raise RecipeError(
                    "an http(s) source needs sha256 = \"<64 hex digits>\" (e.g. from `sha256sum` of a trusted copy)",
                    key="sha256",
                )
        if params.sha256 is not None:
            if kind != "http":
                raise RecipeError("sha256 applies only to http(s) sources", key="sha256")
            from modelbuild.ml.download import SHA256_RE

            if not SHA256_RE.match(params.sha256):
                raise RecipeError(f"sha256 must be 64 hex digits, got {params.sha256!r}", key="sha256")
        # A local source tolerates revision (and uses files as a filter) so that
        # `--set targets.x.source=ckpts/...` turns a Hub recipe into a local one
        # without touching its other keys.
        if kind in ("http", "synthetic"):
            if params.revision != "main":
                raise RecipeError("revision applies only to hf:// sources", key="revision")
            if params.files:
                raise RecipeError("files applies only to hf:// sources and local directories", key="files")
            if params.subdir is not None:
                raise RecipeError("subdir applies only to hf:// sources and local directories", key="subdir")
        if params.subdir is not None:
            sub = PurePosixPath(params.subdir)
            if not params.subdir.strip() or sub.is_absolute() or ".." in sub.parts or "\\" in params.subdir:
                raise RecipeError(
                    f"subdir must be a relative path inside the source, got {params.subdir!r}", key="subdir"
                )
        if params.family is not None:
            self._check_family(params.family)
        if kind == "synthetic":
            self._check_synthetic(params)
        else:
            for key in ("architecture", "size"):
                if getattr(params, key) is not None:
                    raise RecipeError(f'{key} applies only to source = "synthetic"', key=key)
            if params.seed != 0:
                raise RecipeError('seed applies only to source = "synthetic"', key="seed")

    def _check_family(self, family: str) -> None:
        from modelbuild.errors import closest

        try:
            from modelbuild.ml.llm.families import FAMILIES  # light: no torch
        except ImportError:
            return
        if family not in FAMILIES:
            raise RecipeError(
                f"unknown model family '{family}' (known: {', '.join(sorted(FAMILIES))})",
                key="family",
                suggestion=closest(family, FAMILIES),
            )

    def _check_local_family(self, params: Params, project: Path) -> None:
        """A declared ``family`` that the local checkpoint contradicts fails the plan, before anything runs.

        The fetch's own check (``infer.py``), on ``config.json`` or the GGUF
        header's first key: microseconds, no torch. What is not there (yet) is
        left to the fetch.
        """
        from modelbuild.ml.llm.infer import FamilyMismatch, check_local  # light: no torch
        source = self.sources(params)[0]
        try:
            check_local(project / source, params.family, source, list(params.files))
        except FamilyMismatch as err:  # the message names the key: "family = 'x' contradicts <file>: ..."
            raise RecipeError(str(err)) from None
        except ValueError:
            return  # an unknown family name: check() reports it, with a suggestion

    def _check_synthetic(self, params: Params) -> None:
        from modelbuild.errors import closest

        if params.format not in ("auto", "hf"):
            raise RecipeError("a synthetic checkpoint is written in the hf layout", key="format")
        if params.family is not None:
            raise RecipeError("a synthetic checkpoint's family is its architecture", key="family")
        for key in ("architecture", "size"):
            if getattr(params, key) is None:
                raise RecipeError(f'source = "synthetic" needs {key}', key=key)
        sizes = _synthetic_sizes()
        if sizes is None:
            return  # validated in run, where the module must exist
        if params.architecture not in sizes:
            raise RecipeError(
                f"unknown synthetic architecture '{params.architecture}' (known: {', '.join(sorted(sizes))})",
                key="architecture",
                suggestion=closest(params.architecture, sizes),
            )
        known = sizes[params.architecture]
        if params.size not in known:
            raise RecipeError(
                f"unknown size '{params.size}' for {params.architecture} (known: {', '.join(known)})",
                key="size",
                suggestion=closest(params.size, known),
            )

    # -- running ----------------------------------------------------------

    def run(self, ctx: StepContext) -> None:
        from modelbuild.ml import filetree

        params = ctx.params
        # run() may be called without the engine's planning (tests, other
        # tools): the same checks, as step errors.
        try:
            self.check(params, {})
        except RecipeError as err:
            raise StepError(str(err)) from None
        kind = source_kind(params.source)
        record: dict[str, Any] = {"source": params.source, "synthetic": False}
        if kind == "hf":
            record.update(self._fetch_hub(ctx))
        elif kind == "http":
            record.update(self._fetch_http(ctx))
        elif kind == "local":
            record.update(self._fetch_local(ctx))
        else:
            record.update(self._make_synthetic(ctx))
        if params.subdir is not None:
            record["subdir"] = params.subdir

        names = filetree.list_files(ctx.out, skip=(CHECKPOINT_JSON,))
        if not names:
            raise StepError(f"{params.source}: fetched nothing")
        record["format"] = _settle_format(params, record.get("format"), names)
        record["family"] = self._family(ctx, record["format"], params.family or record.get("family"))
        record["files"] = {name: filetree.describe(ctx.out / name) for name in names}
        ctx.write_json(CHECKPOINT_JSON, record)
        total = filetree.human_size(sum(f["size"] for f in record["files"].values()))
        ctx.summary = f"{record['format']} checkpoint, {len(names)} files, {total}"

    def _family(self, ctx: StepContext, fmt: str, declared: str | None) -> str | None:
        """The family from the fetched files (config.json, the GGUF header); a declared one is checked.

        None (the loader's default applies, or export says why it cannot) when
        the files do not tell; a declared family they contradict is an error
        naming the key and the file.
        """
        try:
            from modelbuild.ml.llm.infer import FamilyMismatch, infer_family  # light: no torch
        except ImportError as err:
            ctx.log(f"family not inferred: {err}")
            return declared
        try:
            family, why = infer_family(ctx.out, fmt, declared)
        except FamilyMismatch as err:
            raise StepError(str(err)) from None  # "family = 'x' contradicts <file>: ..."
        ctx.log(why)
        return family

    def _fetch_hub(self, ctx: StepContext) -> dict[str, Any]:
        from modelbuild.ml.filetree import place
        from modelbuild.ml.hub import fetch_snapshot, parse_hf_source, split_revision

        params = ctx.params
        repo = parse_hf_source(params.source)
        # "main@<commit>": the branch as written, pinned by resolve() to the commit that was keyed.
        label, commit = split_revision(params.revision)
        patterns = list(params.files)
        if params.subdir is not None:
            # Patterns are relative to subdir; the Hub matches repo paths.
            prefix = params.subdir.strip("/") + "/"
            patterns = [prefix + p for p in patterns] or [prefix + "*"]
        ctx.log(f"fetching hf://{repo}@{params.revision} files={patterns or ['*']}")
        snap = fetch_snapshot(
            repo,
            revision=commit or label,
            ref=label if commit is not None else None,
            patterns=patterns or None,
            jobs=HUB_DOWNLOADS,  # network-bound: not limited by the step's share of the cores
            progress=lambda done, total, msg: ctx.progress(done, total, msg),
        )
        for name, path in snap.files.items():
            if params.subdir is not None:
                name = name[len(params.subdir.strip("/")) + 1 :]
            # Hub cache blobs are safe to link: huggingface_hub replaces them
            # by rename, never rewrites them in place.
            place(path, ctx.out / name)
        if commit is not None and snap.commit != commit:
            raise StepError(f"hf://{repo}: asked for commit {commit}, the Hub cache gave {snap.commit}")
        ctx.log(f"hf://{repo}: revision {label} is commit {snap.commit}; {len(snap.files)} files")
        return {"revision": label, "resolved_commit": snap.commit}

    def _fetch_http(self, ctx: StepContext) -> dict[str, Any]:
        import urllib.parse

        from modelbuild.ml.download import download, redact_url

        params = ctx.params
        name = Path(urllib.parse.unquote(urllib.parse.urlsplit(params.source).path)).name
        if not name or name in (".", ".."):
            raise StepError(f"cannot name the file of {redact_url(params.source)}: the URL path has no file name")
        download(
            params.source,
            ctx.out / name,
            sha256=params.sha256,
            partial_dir=ctx.downloads / "fetch",
            progress=lambda done, total, msg: ctx.progress(done, total, msg),
            log=ctx.log,
        )
        # A URL may carry user:password@; the record keeps it out.
        return {"source": redact_url(params.source), "sha256": params.sha256.lower()}

    def _fetch_local(self, ctx: StepContext) -> dict[str, Any]:
        """Clone (reflink) or copy a project file or directory; a Hub cache snapshot records its commit.

        A directory may hold symbolic links that stay inside it, or, for a
        snapshot of a Hugging Face cache (``models--ORG--NAME/snapshots/SHA``,
        links into ``blobs/``), inside its repo directory: their content is
        stored. A link leading elsewhere is an error naming it (the rule of
        ``modelbuild.links``, which the action key's hashing applies too).
        """
        from modelbuild.errors import StoreError
        from modelbuild.links import HUB_REPO_DIR, follower, hub_snapshot
        from modelbuild.ml.filetree import list_files, matches, place

        params = ctx.params
        source = self.sources(params)[0]  # the source, narrowed to subdir
        written = ctx.project / source  # as the recipe names it (the engine passes it resolved)
        path = Path(ctx.sources.get(source) or written)
        if not path.exists():
            raise StepError(f"local source '{source}' does not exist (looked in {path})")
        if params.revision != "main":
            ctx.log(f"revision = {params.revision!r} ignored: {source} is a local path")
        record: dict[str, Any] = {}
        snapshot = hub_snapshot(path.resolve() if path.is_dir() else written.parent.resolve())
        if snapshot is not None:
            record["resolved_commit"] = snapshot[1]
            ctx.log(f"{source} is a Hugging Face cache snapshot of commit {snapshot[1]}")
        # Cloned (reflink) where the filesystem can, else copied; never
        # hardlinked: the store would share an inode with a file the user may
        # edit in place, and storing it makes it read-only with a fixed mtime.
        if path.is_file():
            if params.files or params.subdir:
                raise StepError(f"files and subdir select files of a directory, but '{source}' is a file")
            # Named as the recipe names it: a link (a snapshot's file -> blobs/<etag>) keeps its name.
            place(path, ctx.out / written.name, link=False)
            return record
        if HUB_REPO_DIR.fullmatch(path.resolve().name) and (path / "snapshots").is_dir():
            raise StepError(_repo_dir_hint(source, path, params.revision))
        try:
            names = list_files(path, hidden_dirs=False, follow=follower(path))
        except StoreError as err:
            raise StepError(str(err)) from None
        if params.files:
            names = [n for n in names if matches(n, list(params.files))]
            if not names:
                raise StepError(f"no file under '{source}' matches files = [{', '.join(params.files)}]")
        used = {place(path / rel, ctx.out / rel, link=False) for rel in names}
        ctx.log(f"{source}: {len(names)} files placed by {' and '.join(sorted(used))}")
        return record

    def _make_synthetic(self, ctx: StepContext) -> dict[str, Any]:
        params = ctx.params
        try:
            from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint
        except ImportError as err:
            raise StepError(f"synthetic checkpoints are unavailable: {err}") from None
        fields = write_synthetic_checkpoint(ctx.out, params.architecture, params.size, params.seed)
        record = dict(fields or {})
        record.update(
            source="synthetic",
            synthetic=True,
            architecture=params.architecture,
            size=params.size,
            seed=params.seed,
        )
        record.pop("files", None)  # recomputed over what is really in out/
        return record


def _repo_dir_hint(source: str, path: Path, revision: str) -> str:
    """The error for a Hub cache repo directory given as a source: name the snapshot to take."""
    ref = path / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else None
    if commit and (path / "snapshots" / commit).is_dir():
        where = f"{source.rstrip('/')}/snapshots/{commit} (refs/{revision})"
    else:
        where = f"{source.rstrip('/')}/snapshots/<commit>"
    return f"'{source}' is a Hugging Face cache repo (blobs, refs, snapshots): use a snapshot as the source, e.g. {where}"


def _settle_format(params: Params, claimed: str | None, names: list[str]) -> str:
    """The checkpoint format: declared (and checked), claimed by the writer, or detected."""
    from modelbuild.ml.filetree import REQUIRED, detect_format, has_layout, preview, suggest_subdir

    if params.format != "auto":
        if not has_layout(params.format, names):
            raise StepError(
                f'format = "{params.format}" but {params.source} has no {REQUIRED[params.format]} '
                f"at its top level (files: {preview(names)})"
            )
        return params.format
    fmt = claimed or detect_format(names)
    if fmt is not None:
        return fmt
    hint = 'set format = "hf" | "meta" | "gguf"'
    found = suggest_subdir(names)
    if found is not None:
        hint = f'a {found[1]} checkpoint is in {found[0]}/: set subdir = "{found[0]}"'
    raise StepError(
        f"cannot tell the checkpoint format of {params.source} from its top-level files ({preview(names)}): "
        "expected config.json + *.safetensors (hf), params.json + consolidated*.pth or one *.pt (meta) "
        f"or a *.gguf file; {hint}"
    )
