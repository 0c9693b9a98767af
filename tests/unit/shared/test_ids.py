from shared.ids import new_uuids


def test_bulk_ids_are_distinct_version_4_uuids() -> None:
    ids = new_uuids(1000)
    assert len(set(ids)) == 1000
    assert {i.version for i in ids} == {4}
    assert {str(i)[19] for i in ids} <= set("89ab")  # RFC 4122 variant
