import pytest

from spoor.storage.write_key_origins import normalize_origin


@pytest.mark.parametrize("given, origin", [
    ("https://Shop.Example", "https://shop.example"),
    ("https://shop.example/", "https://shop.example"),
    ("https://shop.example:443", "https://shop.example"),
    ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
    ("http://localhost:80", "http://localhost"),
    ("https://[::1]:8443", "https://[::1]:8443"),
    (" * ", "*"),
])
def test_origins_are_written_as_browsers_send_them(given, origin):
    assert normalize_origin(given) == origin


@pytest.mark.parametrize("given", [
    "shop.example", "ftp://shop.example", "https://shop.example/path", "https://shop.example?q=1",
    "https://user:pw@shop.example", "https://", "null", "https://shop.example:99999", "*.shop.example",
])
def test_anything_but_an_origin_is_refused(given):
    with pytest.raises(ValueError):
        normalize_origin(given)
