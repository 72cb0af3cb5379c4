"""COPY's text format, as the worker's writers produce it (storage/writers.py, storage/interests.py)."""

NULL = "\\N"
ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def text_field(value: str | None) -> str:
    """A text field as COPY's text format reads it: NULL, or the text with its separators escaped."""
    if value is None:
        return NULL
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(ESCAPES)
    return value
