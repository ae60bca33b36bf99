"""Commands that exist in the interface but are not built yet say so and fail."""

from ..errors import NotBuiltError


def not_built(command: str, issue: str) -> None:
    raise NotBuiltError(f"`scedit {command}` is not built yet in this version ({issue}); see the README for what works")
