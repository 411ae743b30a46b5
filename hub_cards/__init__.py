"""Templates of gts-hf (installed as ``gts_hf.hub_cards``): the model card, the Space and the remote-code module."""

from importlib import resources


def template_bytes(name: str) -> bytes:
    """The raw contents of the template file ``name`` shipped in this package."""
    return resources.files(__name__).joinpath(name).read_bytes()


def template_text(name: str) -> str:
    return template_bytes(name).decode("utf-8")
