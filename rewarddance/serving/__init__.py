"""``rewarddance serve``: the judge behind HTTP. :func:`create_app` builds the FastAPI app (needs the ``serve``
extra: ``pip install rewarddance[serve]``); :mod:`.wire` is what the server and :mod:`rewarddance.remote` share."""

from __future__ import annotations


def create_app(rm, **options):
    """See :func:`rewarddance.serving.app.create_app`."""
    from .app import create_app as build

    return build(rm, **options)


def serve(rm, **options) -> None:
    """See :func:`rewarddance.serving.app.serve`."""
    from .app import serve as run

    run(rm, **options)
