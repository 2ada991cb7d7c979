"""Model-side library code used by the built-in steps (torch and friends).

Nothing in the core (recipe, graph, engine, store, cli) imports this package;
steps import it inside ``run``.
"""
