"""Recipes: the seeded scripts that produce the models this package ships.

- :mod:`rewarddance.recipes.shapes`: the ShapesWorld generator ``shapes-gen`` and the judges ``shapes-s|m|l`` that
  live in :mod:`rewarddance.bundled` (``python -m rewarddance.recipes.shapes --help``), and the scaling study's
  ablation judges.

:mod:`rewarddance.bundled` holds only the trained folders and the resolver that finds them by name.
"""
