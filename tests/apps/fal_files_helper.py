"""A local module a fal app imports (shipped with app_files)."""


def shout(text: str) -> str:
    return text.upper() + "!"
