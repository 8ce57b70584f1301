"""Taxonomy: loading, derived label spaces, versioning, encoding, bundle compatibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.models.manifest import read_labels
from modeltools.data.taxonomy import (
    UNKNOWN,
    Species,
    Taxonomy,
    TaxonomyError,
    read_label_spaces,
    read_taxonomy,
)

TABLE = """species_code,scientific_name,common_name,genus,family,order,role
gowwar,Vermivora chrysoptera,Golden-winged Warbler,Vermivora,Parulidae,Passeriformes,target
buwwar,Vermivora cyanoptera,Blue-winged Warbler,,Parulidae,Passeriformes,target
reevir1,Vireo olivaceus,Red-eyed Vireo,Vireo,Vireonidae,Passeriformes,target
amewoo,Scolopax minor,American Woodcock,Scolopax,Scolopacidae,Charadriiformes,other
"""


@pytest.fixture
def table(tmp_path: Path) -> Path:
    p = tmp_path / "taxonomy.csv"
    p.write_text(TABLE, encoding="utf-8")
    return p


def test_label_spaces_are_derived_from_the_species(table: Path) -> None:
    tax = read_taxonomy(table)
    spaces = tax.label_spaces
    # Species head: unknown + the *target* species in table order (no out-of-set species).
    assert spaces["species"].classes == (UNKNOWN, "gowwar", "buwwar", "reevir1")
    # Higher heads: unknown + sorted distinct names over *all* species, others included.
    assert spaces["genus"].classes == (UNKNOWN, "Scolopax", "Vermivora", "Vireo")
    assert spaces["family"].classes == (
        UNKNOWN,
        "Parulidae",
        "Scolopacidae",
        "Vireonidae",
    )
    assert spaces["order"].classes == (UNKNOWN, "Charadriiformes", "Passeriformes")
    # An empty genus is derived from the binomial.
    assert tax["buwwar"].genus == "Vermivora"
    assert [s.code for s in tax.others] == ["amewoo"]


def test_encode_sets_every_head_and_out_of_set_only_higher_taxa(table: Path) -> None:
    tax = read_taxonomy(table)
    enc = tax.encode(["buwwar"])
    sp = tax.label_spaces
    assert enc["species"].tolist() == [0, 0, 1, 0]
    assert np.flatnonzero(enc["genus"]).tolist() == [sp["genus"].index("Vermivora")]
    assert np.flatnonzero(enc["family"]).tolist() == [sp["family"].index("Parulidae")]
    assert np.flatnonzero(enc["order"]).tolist() == [sp["order"].index("Passeriformes")]
    other = tax.encode(["amewoo"])  # out-of-set: only its higher taxonomy
    assert other["species"].sum() == 0
    assert other["genus"][sp["genus"].index("Scolopax")] == 1
    assert other["order"][sp["order"].index("Charadriiformes")] == 1
    assert tax.encode(["amewoo"], mark_unknown=True)["species"].tolist() == [1, 0, 0, 0]
    both = tax.encode(["gowwar", "reevir1"])
    assert both["species"].tolist() == [0, 1, 0, 1]
    assert both["order"].sum() == 1  # one order for the two
    with pytest.raises(KeyError):
        tax.encode(["nosuch"])


def test_version_depends_on_content_not_formatting(table: Path, tmp_path: Path) -> None:
    tax = read_taxonomy(table)
    # Same rows, other column order, extra whitespace, BOM: same version.
    lines = [line.split(",") for line in TABLE.strip().splitlines()]
    order = [6, 0, 2, 1, 3, 4, 5]
    shuffled = "\ufeff" + "\n".join(",".join(f" {r[i]} " for i in order) for r in lines)
    (tmp_path / "b.csv").write_text(shuffled, encoding="utf-8")
    # Genus given explicitly where the first table derived it: same content, same version.
    assert read_taxonomy(tmp_path / "b.csv").version == tax.version
    changed = TABLE.replace("Red-eyed Vireo", "Red-eyed Vireo!")
    (tmp_path / "c.csv").write_text(changed, encoding="utf-8")
    assert read_taxonomy(tmp_path / "c.csv").version != tax.version
    assert tax.version.startswith("tax-") and len(tax.version) == 20


def test_written_table_is_a_valid_bundle_label_table(table: Path, tmp_path: Path) -> None:
    tax = read_taxonomy(table)
    csv_path, spaces_path = tax.write(tmp_path / "out")
    labels = read_labels(csv_path)  # the agent's own bundle reader accepts it
    assert [lab.species_code for lab in labels] == [s.code for s in tax.species]
    assert labels[0].family == "Parulidae"
    again = read_taxonomy(csv_path)
    assert again.version == tax.version
    spaces = read_label_spaces(spaces_path)
    assert spaces["genus"].classes == tax.label_spaces["genus"].classes
    bundle = tax.bundle_labels()
    assert bundle[0].species_code == UNKNOWN
    assert [lab.species_code for lab in bundle[1:]] == ["gowwar", "buwwar", "reevir1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("species_code,common_name\nx,X\n", "missing column(s) scientific_name"),
        (TABLE + "gowwar,Dup dup,Dup,,,,\n", "duplicate species_code 'gowwar'"),
        (TABLE + "unknown,A b,C,,,,\n", "reserved"),
        (TABLE + "zzz,A b,C,,,,bird\n", "role must be one of"),
        (TABLE + ",A b,C,,,,\n", ":6: empty species_code"),
        ("species_code,scientific_name,common_name\n", "no species"),
    ],
)
def test_bad_tables_are_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    p = tmp_path / "t.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(TaxonomyError) as err:
        read_taxonomy(p)
    assert message in str(err.value)
    assert str(p) in str(err.value)


def test_lookup_by_code_or_scientific_name(table: Path) -> None:
    tax = read_taxonomy(table)
    assert tax.lookup("reevir1") is tax["reevir1"]
    assert tax.lookup("vireo OLIVACEUS") is tax["reevir1"]
    assert tax.lookup("Vireo") is None


def test_species_with_unknown_family_report_it() -> None:
    tax = Taxonomy([Species("a", "Aa bb", "A", "Aa"), Species("b", "Cc dd", "B", "Cc", "Fam")])
    assert tax.known_heads("a") == {"species": True, "genus": True, "family": False, "order": False}
    assert tax.label_spaces["family"].classes == (UNKNOWN, "Fam")
    assert tax.encode(["a"])["family"].sum() == 0
