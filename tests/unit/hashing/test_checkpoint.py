"""C2SP tlog-checkpoint bodies and the fork-refusing CheckpointSigner."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hashing.checkpoint import Checkpoint, CheckpointSigner, SignedCheckpoint, default_origin
from hashing.errors import ForkError, InputError, SignatureError, UnknownSignerError
from hashing.merkle import EMPTY_ROOT, hasher_over_leaves, leaf_hash
from hashing.note import NoteSigner, NoteVerifier, open_note, sign_note
from tests.unit.hashing.test_merkle import model_mth, model_proof

ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# --------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------


def test_body_format() -> None:
    cp = Checkpoint("evidock/st-1", 42, ROOT)
    assert cp.body() == f"evidock/st-1\n42\n{ROOT_B64}\n"
    assert cp.root_b64 == ROOT_B64
    with_ext = Checkpoint("evidock/st-1", 0, EMPTY_ROOT, ("ext one", "— ext two"))
    assert with_ext.body() == (
        "evidock/st-1\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\next one\n— ext two\n"
    )


def test_known_body_parses() -> None:
    # A body as another log would publish it (origin, size, root; no extensions).
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.parse(body)
    assert (cp.origin, cp.size, cp.extensions) == ("example.com/behind-the-sofa", 20852163, ())
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.body() == body


origins = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), min_size=1)
extension_lines = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\n"), min_size=1
)


@given(
    origins,
    st.integers(0, 10**19 - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(extension_lines, max_size=3).map(tuple),
)
def test_body_round_trip(origin: str, size: int, root: bytes, ext: tuple[str, ...]) -> None:
    cp = Checkpoint(origin, size, root, ext)
    body = cp.body()
    assert body.count("\n") == 3 + len(ext)
    assert Checkpoint.parse(body) == cp
    assert Checkpoint.parse(body).body() == body


@pytest.mark.parametrize(
    "body",
    [
        f"o\n1\n{ROOT_B64}",  # no final newline
        f"o\n1\n{ROOT_B64}\n\n",  # empty extension line
        f"o\n1\n{ROOT_B64}\n\next\n",
        "o\n1\n",  # no root
        "o\n",
        "",
        "\n",
        f"\n1\n{ROOT_B64}\n",  # empty origin
        f"o\n01\n{ROOT_B64}\n",  # leading zero
        f"o\n-1\n{ROOT_B64}\n",
        f"o\n+1\n{ROOT_B64}\n",
        f"o\n 1\n{ROOT_B64}\n",
        f"o\n1 \n{ROOT_B64}\n",
        f"o\n1.0\n{ROOT_B64}\n",
        f"o\n0x10\n{ROOT_B64}\n",
        f"o\n\u0661\n{ROOT_B64}\n",  # a non-ASCII digit int() would accept
        f"o\n{'1' * 20}\n{ROOT_B64}\n",
        f"o\n\n{ROOT_B64}\n",
        "o\n1\nnot base64!\n",
        f"o\n1\n{ROOT_B64[:-1]}\n",  # padding missing
        f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31 bytes
        f"o\n1\n{base64.b64encode(ROOT + b'x').decode()}\n",  # 33 bytes
        f"o\n1\n{ROOT_B64.replace('+', '-').replace('/', '_')}\n",  # URL alphabet
        f"o\n1\n {ROOT_B64}\n",
        f"o\n1\n{ROOT_B64}=\n",  # excess padding (Python's decoder would let it by)
        f"o\n1\n{ROOT_B64[:-2]}{_B64[_B64.index(ROOT_B64[-2]) + 1]}=\n",  # non-zero pad bits
        f"o\r\n1\r\n{ROOT_B64}\r\n",
    ],
    ids=repr,
)
def test_parse_is_strict(body: str) -> None:
    with pytest.raises(InputError):
        Checkpoint.parse(body)


def test_default_origin() -> None:
    assert default_origin("st-1") == "evidock/st-1"
    with pytest.raises(InputError):
        default_origin("st 1")


# --------------------------------------------------------------------------
# The signer
# --------------------------------------------------------------------------


def _leaves(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


class Tree:
    """A log in memory: the prove(old, new) callback a ledger would give."""

    def __init__(self, data: list[bytes]) -> None:
        self.data = data
        self.hasher = hasher_over_leaves([leaf_hash(x) for x in data])

    def root(self, size: int) -> bytes:
        return self.hasher.root(size)

    def prove(self, old: int, new: int) -> list[bytes]:
        return self.hasher.consistency_proof(old, new)


@pytest.fixture
def key() -> NoteSigner:
    return NoteSigner.generate("evidock/st-1")


def _signer(key: NoteSigner, tmp_path: Path) -> CheckpointSigner:
    return CheckpointSigner(key, "evidock/st-1", tmp_path / "keys" / "checkpoint-state.json")


def test_sign_writes_a_verifiable_note_and_private_state(key: NoteSigner, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    tree = Tree(_leaves("a", 7))
    signer = _signer(key, tmp_path)
    assert signer.last_signed() is None
    signed = signer.sign(7, tree.root(7), tree.prove)
    assert signed.checkpoint == Checkpoint("evidock/st-1", 7, model_mth(_leaves("a", 7)))
    opened = open_note(signed.note, [key.verifier])
    assert opened.text == signed.checkpoint.body()
    again, opened2 = SignedCheckpoint.open(signed.note.encode(), [key.verifier])
    assert again == signed
    assert opened2.verified == (key.verifier,)
    # The state file: 0600, and it names origin, size and root.
    mode = stat.S_IMODE(signer.state_path.stat().st_mode)
    assert mode == 0o600
    assert json.loads(signer.state_path.read_text()) == {
        "origin": "evidock/st-1",
        "size": 7,
        "root": base64.b64encode(tree.root(7)).decode(),
    }
    assert signer.last_signed() == (7, tree.root(7))


def test_opening_with_the_wrong_key_fails(key: NoteSigner, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    tree = Tree(_leaves("a", 3))
    signed = _signer(key, tmp_path).sign(3, tree.root(3), tree.prove)
    with pytest.raises(UnknownSignerError):
        SignedCheckpoint.open(signed.note, [NoteSigner.generate("evidock/st-1").verifier])
    forged_body = Checkpoint("evidock/st-1", 4, tree.root(3)).body()
    forged = forged_body + signed.note[len(signed.checkpoint.body()) :]
    with pytest.raises(SignatureError):
        SignedCheckpoint.open(forged, [key.verifier])


def test_refuses_rollback_and_fork_across_signer_objects(key: NoteSigner, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    honest = Tree(_leaves("a", 20))
    _signer(key, tmp_path).sign(10, honest.root(10), honest.prove)

    # A new object (a restarted daemon) reads the same state file.
    signer = _signer(key, tmp_path)
    assert signer.last_signed() == (10, honest.root(10))
    with pytest.raises(ForkError, match="already signed"):
        signer.sign(9, honest.root(9), honest.prove)  # rollback
    with pytest.raises(ForkError, match="already signed"):
        signer.sign(0, EMPTY_ROOT, honest.prove)
    forked = Tree([*_leaves("a", 9), b"evil", *_leaves("b", 10)])
    with pytest.raises(ForkError, match="fork"):
        signer.sign(10, forked.root(10), forked.prove)  # same size, other root
    with pytest.raises(ForkError, match="does not extend"):
        signer.sign(15, forked.root(15), forked.prove)  # larger, not an extension
    # A liar's proof does not help: the root it leads to is checked.
    with pytest.raises(ForkError, match="does not extend"):
        signer.sign(15, forked.root(15), honest.prove)
    with pytest.raises(ForkError):
        signer.sign(15, forked.root(15), lambda old, new: [])
    # Refusals leave the state alone.
    assert _signer(key, tmp_path).last_signed() == (10, honest.root(10))

    # The same head again, and an honest extension, are fine.
    assert signer.sign(10, honest.root(10), honest.prove).checkpoint.size == 10
    grown = signer.sign(20, honest.root(20), honest.prove)
    assert grown.checkpoint == Checkpoint("evidock/st-1", 20, model_mth(_leaves("a", 20)))
    assert _signer(key, tmp_path).last_signed() == (20, honest.root(20))
    with pytest.raises(ForkError):
        _signer(key, tmp_path).sign(10, honest.root(10), honest.prove)


def test_consistency_proof_is_requested_from_the_last_signed_size(
    key: NoteSigner, tmp_path: Path
) -> None:
    (tmp_path / "keys").mkdir()
    tree = Tree(_leaves("a", 13))
    asked: list[tuple[int, int]] = []

    def prove(old: int, new: int) -> list[bytes]:
        asked.append((old, new))
        return model_proof(old, tree.data[:new])

    signer = _signer(key, tmp_path)
    signer.sign(5, tree.root(5), prove)
    signer.sign(13, tree.root(13), prove)
    assert asked == [(5, 13)]


def test_state_for_another_origin_or_corrupt_state_is_refused(
    key: NoteSigner, tmp_path: Path
) -> None:
    (tmp_path / "keys").mkdir()
    tree = Tree(_leaves("a", 2))
    _signer(key, tmp_path).sign(2, tree.root(2), tree.prove)
    other = CheckpointSigner(key, "evidock/st-2", tmp_path / "keys" / "checkpoint-state.json")
    with pytest.raises(InputError, match="origin"):
        other.sign(2, tree.root(2), tree.prove)
    state = tmp_path / "keys" / "checkpoint-state.json"
    state.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        _signer(key, tmp_path).sign(2, tree.root(2), tree.prove)


def test_signed_note_is_what_sign_note_writes(key: NoteSigner, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    tree = Tree(_leaves("a", 4))
    signed = _signer(key, tmp_path).sign(4, tree.root(4), tree.prove)
    assert signed.note == sign_note(signed.checkpoint.body(), [key])
    assert NoteVerifier.parse(key.verifier.vkey) == key.verifier
