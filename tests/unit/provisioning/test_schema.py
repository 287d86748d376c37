from pathlib import Path

import pytest
import yaml

from provisioning.schema import ConsortiumFileError, load_consortium

EXAMPLE = Path(__file__).resolve().parents[3] / "provisioning" / "consortium.yml"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "consortium.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def test_example_file_is_valid():
    consortium = load_consortium(EXAMPLE)
    assert [s.name for s in consortium.sites] == ["hospital-a", "hospital-b", "hospital-c"]
    assert consortium.users_with_role("lead")[0].name == "lead@hospital-a.org"
    assert {u.role for u in consortium.users} >= {"project_admin", "lead", "org_admin", "compliance_officer"}


def test_service_identity_gets_a_flare_kit():
    consortium = load_consortium(EXAMPLE)
    names = [u.name for u in consortium.flare_users]
    assert names[0] == "service@consortium.org"
    assert "compliance@consortium.org" not in names


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["sites"].append({"name": "hospital-a", "org": "x"}), "duplicate participant name 'hospital-a'"),
        (lambda d: d["sites"][0].update(org="hospital-a"), "invalid site org 'hospital-a'"),
        (lambda d: d["users"][0].update(role="superuser"), "unknown role 'superuser'"),
        (lambda d: d["server"].update(name="bad_host!"), "invalid server name 'bad_host!'"),
        (lambda d: d["users"][0].update(name="not-an-email"), "invalid user name 'not-an-email'"),
        (lambda d: d["server"].update(fed_learn_port=80), "invalid port 80"),
        (lambda d: d.update(sites=[]), "sites"),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_invalid_file_names_field(tmp_path, mutate, fragment):
    data = example()
    mutate(data)
    with pytest.raises(ConsortiumFileError) as excinfo:
        load_consortium(write(tmp_path, data))
    assert fragment in str(excinfo.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConsortiumFileError, match="not found"):
        load_consortium(tmp_path / "nope.yml")


def test_non_mapping_file_rejected(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConsortiumFileError, match="YAML mapping"):
        load_consortium(path)
