"""Publishing to the Hugging Face Hub (filled in by its issue)."""


def register(subparsers) -> None:
    pass
