"""MESSENGER_DATA_DIR is one service's at a time, and the page's origins the embedded S3 allows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from messenger.data_dir import DataDirInUse, data_dir_claimed
from messenger.web import page_origins


def test_a_second_claim_on_the_same_data_dir_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with data_dir_claimed(data):
        assert (data / "lock").read_text().strip() == str(os.getpid())
        with pytest.raises(DataDirInUse) as refused, data_dir_claimed(data):
            pass
        assert str(data) in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
        assert "MESSENGER_DATA_DIR" in str(refused.value)
    with data_dir_claimed(data):  # released with its holder
        pass


def test_the_page_origins_of_a_loopback_or_wildcard_host_include_both_loopback_names() -> None:
    assert page_origins("127.0.0.1", 8080) == page_origins("0.0.0.0", 8080)
    assert {"http://127.0.0.1:8080", "http://localhost:8080"} <= set(page_origins("0.0.0.0", 8080))
    assert page_origins("chat.example", 80) == ["http://chat.example:80"]
