from datetime import datetime, timezone
from decimal import Decimal

from storage.writers import copy_text


def test_copy_text_escapes_what_copy_would_misread():
    text = copy_text([("a\tb\\c\nd\re", None, Decimal("1.50"), 3,
                       datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc))]).read()
    assert text == "a\\tb\\\\c\\nd\\re\t\\N\t1.50\t3\t2024-01-02T03:04:05+00:00\n"
