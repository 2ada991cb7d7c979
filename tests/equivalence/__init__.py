"""The randomized equivalence test of issue 11 (tests/test_equivalence.py, bench/bench_equivalence.py).

- model.py: an independent model of what a correct build does (outputs, keys, the cache);
- generated.py: the shell commands and the step plugin's source the test writes;
- project.py: the project on disk, the plugin install, running the CLI;
- edits.py: what the rules do to the project (edits, damage);
- machine.py: the hypothesis state machine and its checks.
"""
