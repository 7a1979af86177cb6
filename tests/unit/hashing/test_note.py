"""C2SP signed notes: the spec's example, Go's sumdb/note test vectors
(golang.org/x/mod/sumdb/note/note_test.go), and property tests.
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing.errors import InputError, SignatureError, UnknownSignerError
from hashing.note import (
    MAX_SIGNATURES,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

# c2sp.org/signed-note, "Signed note" example.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_TEXT = "This is an example message.\n"
SPEC_SIG_LINE = (
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsY"
    "jOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
SPEC_NOTE = SPEC_TEXT + "\n" + SPEC_SIG_LINE

# Go's note_test.go (TestNewVerifier, TestNewSigner, TestSign, TestOpen).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqf"
    "qdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTG"
    "wnWLox33WWd1RvMc+QQ=\n"
)


def _signer_from_seed(name: str, seed: bytes) -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.from_private_bytes(seed))


# --------------------------------------------------------------------------
# Published vectors
# --------------------------------------------------------------------------


def test_spec_example_verifies() -> None:
    verifier = NoteVerifier.parse(SPEC_VKEY)
    assert verifier.name == "example.com/foo"
    assert verifier.key_id_hex == "530d903a"
    assert verifier.vkey == SPEC_VKEY
    opened = open_note(SPEC_NOTE, [verifier])
    assert opened.text == SPEC_TEXT
    assert opened.verified == (verifier,)
    assert opened.unverified == ()
    # Bytes in, same answer.
    assert open_note(SPEC_NOTE.encode(), [verifier]).text == SPEC_TEXT


def test_spec_example_rejects_any_other_text() -> None:
    verifier = NoteVerifier.parse(SPEC_VKEY)
    for text in ("This is an example message!\n", "This is an example message.\nx\n"):
        with pytest.raises(SignatureError) as info:
            open_note(text + "\n" + SPEC_SIG_LINE, [verifier])
        assert not isinstance(info.value, UnknownSignerError)


def test_go_verifier_and_signer_keys_agree() -> None:
    peter = NoteVerifier.parse(PETER_VKEY)
    assert (peter.name, peter.key_id_hex, peter.vkey) == ("PeterNeumann", "c74f20a3", PETER_VKEY)
    signer = NoteSigner.parse(PETER_SKEY)  # its base64 holds a '+'
    assert signer.verifier == peter
    assert signer.private_text() == PETER_SKEY
    assert NoteVerifier.parse(ENOCH_VKEY).key_id_hex == "af0cfe78"


def test_go_sign_vector_is_reproduced_byte_for_byte() -> None:
    # Ed25519 is deterministic, so Go's TestSign output is the only right answer.
    signer = NoteSigner.parse(PETER_SKEY)
    assert sign_note(GO_TEXT, [signer]) == GO_TEXT + "\n" + PETER_SIG


def test_go_open_one_verified_one_unverified() -> None:
    peter = NoteVerifier.parse(PETER_VKEY)
    opened = open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter])
    assert opened.text == GO_TEXT
    assert opened.verified == (peter,)
    assert [(s.name, s.key_id.hex()) for s in opened.unverified] == [("EnochRoot", "af0cfe78")]
    enoch_raw = base64.b64decode(ENOCH_SIG.rsplit(maxsplit=1)[-1])
    assert opened.unverified[0].signature == enoch_raw[4:]


def test_go_open_both_verified() -> None:
    peter, enoch = NoteVerifier.parse(PETER_VKEY), NoteVerifier.parse(ENOCH_VKEY)
    opened = open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, [peter, enoch])
    assert opened.verified == (peter, enoch)
    assert opened.unverified == ()


def test_go_open_no_known_signer() -> None:
    with pytest.raises(UnknownSignerError, match="PeterNeumann\\+c74f20a3"):
        open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])
    # Same name, other key: still unknown, not a bad signature.
    other = NoteSigner.generate("PeterNeumann").verifier
    with pytest.raises(UnknownSignerError):
        open_note(GO_TEXT + "\n" + PETER_SIG, [other])


def test_go_open_too_many_signatures() -> None:
    peter = NoteVerifier.parse(PETER_VKEY)
    assert MAX_SIGNATURES == 100
    opened = open_note(GO_TEXT + "\n" + PETER_SIG * 100, [peter])
    assert opened.verified == (peter,)  # repeats by one key count once
    for verifiers in ([peter], []):
        with pytest.raises(InputError):
            open_note(GO_TEXT + "\n" + PETER_SIG * 101, verifiers)


def test_go_open_invalid_signature() -> None:
    # Go: peterSig[:60] + "ABCD" + peterSig[60:] is "invalid signature for key ...".
    # (Index 60 counts bytes; the em dash is three bytes, one character.)
    sig = PETER_SIG.encode()
    bad = (sig[:60] + b"ABCD" + sig[60:]).decode()
    with pytest.raises(SignatureError) as info:
        open_note(GO_TEXT + "\n" + bad, [NoteVerifier.parse(PETER_VKEY)])
    assert not isinstance(info.value, UnknownSignerError)


def test_go_open_duplicated_signatures() -> None:
    peter = NoteVerifier.parse(PETER_VKEY)
    sig = ENOCH_SIG.encode()
    enoch_abcd = (sig[:60] + b"ABCD" + sig[60:]).decode()
    note = GO_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_abcd
    opened = open_note(note, [peter])
    assert opened.verified == (peter,)
    assert {s.name for s in opened.unverified} == {"EnochRoot"}
    # A good then a bad signature by one known key: the first decides, as in Go.
    good_then_bad = GO_TEXT + "\n" + PETER_SIG + (PETER_SIG.encode()[:60] + b"ABCD").decode()
    good_then_bad += PETER_SIG.encode()[60:].decode()
    assert open_note(good_then_bad, [peter]).verified == (peter,)
    bad_then_good = GO_TEXT + "\n" + (PETER_SIG.encode()[:60] + b"ABCD").decode()
    bad_then_good += PETER_SIG.encode()[60:].decode() + PETER_SIG
    with pytest.raises(SignatureError):
        open_note(bad_then_good, [peter])


@pytest.mark.parametrize(
    "message",
    [
        # Go's badMsgs.
        GO_TEXT.encode(),
        (GO_TEXT + "\n").encode(),
        (GO_TEXT + "\n" + PETER_SIG[:-1]).encode(),
        ("\x01" + GO_TEXT + "\n" + PETER_SIG).encode(),
        b"\xff" + (GO_TEXT + "\n" + PETER_SIG).encode(),
        (GO_TEXT + "\n" + "\u2014 Bad Name " + PETER_SIG.rsplit(maxsplit=1)[-1]).encode(),
        (GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n").encode(),
        # More malformed notes.
        b"",
        b"\n\n",
        ("\n" + PETER_SIG).encode(),  # empty text
        ("a\n\nb\n\n" + PETER_SIG).encode(),  # blank line inside the text
        ("tab\there\n\n" + PETER_SIG).encode(),
        ("del\x7f\n\n" + PETER_SIG).encode(),
        (GO_TEXT + "\n" + PETER_SIG.replace("\u2014 ", "-- ")).encode(),
        (GO_TEXT + "\n" + PETER_SIG.replace("\u2014 ", "\u2014")).encode(),
        (GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann")).encode(),
        (GO_TEXT + "\n" + PETER_SIG.replace(" x08go", "  x08go")).encode(),
        (GO_TEXT + "\n" + "\u2014 PeterNeumann AAAAAA==\n").encode(),  # under 5 bytes
        (GO_TEXT + "\n" + "\u2014 PeterNeumann not*base64\n").encode(),
        (GO_TEXT + "\n" + "\u2014 PeterNeumann \n").encode(),
        (GO_TEXT + "\n" + PETER_SIG + "\n").encode(),
        b"x" * 1_000_001 + b"\n\n" + PETER_SIG.encode(),
    ],
    ids=range(22),
)
def test_malformed_notes_are_input_errors(message: bytes) -> None:
    with pytest.raises(InputError):
        open_note(message, [NoteVerifier.parse(PETER_VKEY)])


def _manglings(key: str) -> list[str]:
    """Go's TestNewVerifier/TestNewSigner manglings: every proper substring and
    every single-byte increment."""
    out = {key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1)}
    out.discard(key)
    for i in range(len(key)):
        out.add(key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :])
    return sorted(out)


def test_go_verifier_key_manglings_are_refused() -> None:
    bad = [
        *_manglings(PETER_VKEY),
        # Go: wrong-length key and unknown algorithm, each with an adjusted key hash.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ]
    for vkey in bad:
        with pytest.raises(InputError):
            NoteVerifier.parse(vkey)


def test_go_signer_key_manglings_are_refused() -> None:
    for skey in _manglings(PETER_SKEY):
        with pytest.raises(InputError):
            NoteSigner.parse(skey)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

# Key names: non-empty, no Unicode space, no '+', no control characters.
names = st.text(
    alphabet=st.characters(
        exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
        exclude_characters="+\x85\u180e\u200b\ufeff",
    ),
    min_size=1,
    max_size=20,
).filter(lambda s: not any(c.isspace() for c in s))
lines = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
note_texts = st.lists(lines, min_size=1, max_size=5).map(lambda ls: "".join(f"{x}\n" for x in ls))
seeds = st.binary(min_size=32, max_size=32)


@settings(max_examples=60, deadline=None)
@given(
    note_texts, st.lists(st.tuples(names, seeds), min_size=1, max_size=3, unique_by=lambda x: x[0])
)
def test_sign_open_round_trip(text: str, keys: list[tuple[str, bytes]]) -> None:
    signers = [_signer_from_seed(name, seed) for name, seed in keys]
    note = sign_note(text, signers)
    assert note.startswith(text + "\n")
    parsed_text, sigs = parse_note(note)
    assert parsed_text == text
    assert [(s.name, s.key_id) for s in sigs] == [(s.name, s.verifier.key_id) for s in signers]
    verifiers = [NoteVerifier.parse(s.verifier.vkey) for s in signers]
    opened = open_note(note, verifiers)
    assert opened.text == text
    assert opened.verified == tuple(verifiers)
    # Any one trusted key is enough; the others are reported as unverified.
    opened = open_note(note.encode(), verifiers[-1:])
    assert opened.verified == (verifiers[-1],)
    assert len(opened.unverified) == len(signers) - 1


@settings(max_examples=60, deadline=None)
@given(names, seeds)
def test_verifier_and_private_key_text_round_trip(name: str, seed: bytes) -> None:
    signer = _signer_from_seed(name, seed)
    verifier = signer.verifier
    assert verifier.key_id == key_id(name, verifier.public_key)
    assert NoteVerifier.parse(verifier.vkey) == verifier
    assert NoteVerifier.parse(str(verifier)) == verifier
    text = signer.private_text()
    assert text.startswith(f"PRIVATE+KEY+{name}+{verifier.key_id_hex}+")
    again = NoteSigner.parse(text)
    assert again.verifier == verifier
    assert again.private_text() == text
    assert again.sign(b"m") == signer.sign(b"m")
    # The private half never shows in repr/str.
    secret = text.split("+", 4)[4]
    assert secret not in repr(signer) and secret not in str(signer)
    assert base64.b64encode(seed).decode() not in repr(signer)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 63 * 8 - 1))
def test_flipped_signature_bit_from_known_key_is_a_bad_signature(bit: int) -> None:
    signer = NoteSigner.parse(PETER_SKEY)
    note = sign_note(GO_TEXT, [signer])
    raw = bytearray(base64.b64decode(note.rstrip("\n").split(" ")[-1]))
    raw[4 + bit // 8] ^= 1 << (bit % 8)  # the signature, after the 4-byte key id
    tampered = GO_TEXT + "\n" + f"\u2014 PeterNeumann {base64.b64encode(raw).decode()}\n"
    with pytest.raises(SignatureError) as info:
        open_note(tampered, [signer.verifier])
    assert not isinstance(info.value, UnknownSignerError)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 31))
def test_flipped_key_id_bit_makes_the_signer_unknown(bit: int) -> None:
    signer = NoteSigner.parse(PETER_SKEY)
    raw = bytearray(base64.b64decode(PETER_SIG.rsplit(maxsplit=1)[-1]))
    raw[bit // 8] ^= 1 << (bit % 8)
    tampered = GO_TEXT + "\n" + f"\u2014 PeterNeumann {base64.b64encode(raw).decode()}\n"
    with pytest.raises(UnknownSignerError):
        open_note(tampered, [signer.verifier])


@settings(max_examples=100, deadline=None)
@given(note_texts, st.data())
def test_altered_text_from_known_key_is_a_bad_signature(text: str, data: st.DataObject) -> None:
    signer = NoteSigner.parse(PETER_SKEY)
    note = sign_note(text, [signer])
    i = data.draw(st.integers(0, len(text) - 2), label="position")  # not the final newline
    replacement = data.draw(
        st.characters(exclude_categories=("Cs", "Cc")).filter(lambda c: c != text[i]),
        label="replacement",
    )
    altered = text[:i] + replacement + text[i + 1 :]
    with pytest.raises(SignatureError) as info:
        open_note(altered + note[len(text) :], [signer.verifier])
    assert not isinstance(info.value, UnknownSignerError)


def test_sign_note_refuses_bad_text_and_names() -> None:
    signer = NoteSigner.generate("evidock/st-1")
    for text in ("", "no newline", "a\n\nb\n", "bell\x07\n", "del\x7f\n", "x\n\n"):
        with pytest.raises(InputError):
            sign_note(text, [signer])
    for name in ("", "a b", "a+b", "tab\t", "nl\n", "ctl\x01", "nbsp\u00a0", "ideo\u3000"):
        with pytest.raises(InputError):
            NoteSigner.generate(name)


def test_signer_and_verifier_parse_refuse_garbage() -> None:
    peter = NoteVerifier.parse(PETER_VKEY)
    skey = PETER_SKEY
    name, hex_id, b64 = PETER_VKEY.split("+", 2)
    other_alg = base64.b64encode(b"\x02" + peter.public_key).decode()
    for bad in (
        f"{name}+{hex_id.upper()}+{b64}",  # evidock writes and reads lower-case ids
        f"{name}+{hex_id}+{b64[:-1]}",
        f"{name}+{hex_id}+{b64[:-4]}",
        f"{name}+{hex_id}",
        f"+{hex_id}+{b64}",
        f"{name}+{hex_id}+{other_alg}",
        f"{name}+{key_id(name, peter.public_key[::-1]).hex()}+{b64}",
    ):
        with pytest.raises(InputError):
            NoteVerifier.parse(bad)
    for bad in (skey.replace("PRIVATE+KEY", "PUBLIC+KEY"), skey[:-4], "PRIVATE+KEY+" + PETER_VKEY):
        with pytest.raises(InputError):
            NoteSigner.parse(bad)
