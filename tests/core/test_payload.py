"""analysis._core.payload: torch files of plain data, refused when of another kind; content hashes."""

from __future__ import annotations

import pytest
import torch

from analysis._core.errors import GhostmapsError
from analysis._core.payload import digest, read_payload, state_fingerprint, write_payload


def test_payload_round_trip_and_refusals(tmp_path):
    path = write_payload(tmp_path / "a.pt", {"format": "kind-a", "x": torch.arange(3)})
    got = read_payload(path, "kind-a", "thing")
    assert torch.equal(got["x"], torch.arange(3)) and not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(GhostmapsError, match=r"is not a ghostmaps thing; try again"):
        read_payload(path, "kind-b", "thing", "; try again")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(ValueError, match="is not a readable thing"):
        read_payload(tmp_path / "junk.pt", "kind-a", "thing", error=ValueError)


def test_digest_sees_values_shapes_and_dtypes():
    x = torch.arange(6, dtype=torch.float32)
    base = digest("a", x)
    assert digest("a", x.clone()) == base and len(base) == 32
    assert digest("b", x) != base
    assert digest("a", x.view(2, 3)) != base
    assert digest("a", x.double()) != base
    y = x.clone()
    y[5] += 1
    assert digest("a", y) != base
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    b.load_state_dict(a.state_dict())
    assert state_fingerprint(a) == state_fingerprint(b)
    with torch.no_grad():
        b.bias += 1
    assert state_fingerprint(a) != state_fingerprint(b)


def test_atomic_writes_from_two_threads_to_one_path_never_mix(tmp_path):
    """Each call writes its own temporary file, so concurrent writers of one path leave one whole payload."""
    import threading

    from analysis._core.io import atomic_path

    target = tmp_path / "out.bin"
    payloads = [bytes([k]) * 200_000 for k in (1, 2)]
    ready = threading.Barrier(2)
    temps: list[str] = []

    def write(data: bytes) -> None:
        with atomic_path(target) as tmp:
            temps.append(tmp.name)
            ready.wait()  # both temporaries exist at once
            tmp.write_bytes(data)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(temps)) == 2
    assert target.read_bytes() in payloads and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
