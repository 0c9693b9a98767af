import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.crypto import (
    DataKey,
    KeyDestroyed,
    TamperedCiphertext,
    master_key_from_text,
    open_with,
    seal_with,
    subject_id,
    subject_of,
)


def new_key() -> DataKey:
    import os

    return DataKey(os.urandom(8), AESGCM.generate_key(256))


def test_sealed_data_opens_only_with_its_key_subject_and_context() -> None:
    key, subject = new_key(), uuid.uuid4()
    sealed = seal_with(key, subject, b'{"achternaam": "Berg"}', "signaal.persoonsgegevens")
    assert "Berg" not in sealed
    assert subject_of(sealed) == subject
    assert open_with(key, sealed, "signaal.persoonsgegevens") == b'{"achternaam": "Berg"}'
    with pytest.raises(TamperedCiphertext):
        open_with(key, sealed, "another.field")
    with pytest.raises(TamperedCiphertext):
        open_with(DataKey(key.key_id, AESGCM.generate_key(256)), sealed, "signaal.persoonsgegevens")
    with pytest.raises(KeyDestroyed):  # a later key of the same person does not open it
        open_with(new_key(), sealed, "signaal.persoonsgegevens")


def test_the_same_plaintext_seals_differently_each_time() -> None:
    key, subject = new_key(), uuid.uuid4()
    assert seal_with(key, subject, b"x", "c") != seal_with(key, subject, b"x", "c")


def test_subject_ids_are_stable_pseudonyms() -> None:
    assert subject_id("s", "bsn|999990019") == subject_id("s", "bsn|999990019")
    assert subject_id("s", "bsn|999990019") != subject_id("other", "bsn|999990019")


def test_master_key_is_256_bits_in_either_form() -> None:
    import base64

    raw = bytes(range(32))
    assert master_key_from_text(base64.b64encode(raw).decode()) == raw
    assert len(master_key_from_text("development-only-master-key")) == 32
