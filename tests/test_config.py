import pytest

from voicebridge.config.file import ConfigError, NoTenant, load_config, parse_config

SAMPLE = """
handler = "echo"
unknown_tenant = "default"

[default]
plan = "basic"

[tenants.business-1]
numbers = ["+1 555 010-0001", "+15550100002"]
plan = "pro"
max_calls = 3
"""


def test_tenants_by_id_and_number(tmp_path):
    path = tmp_path / "vb.toml"
    path.write_text(SAMPLE)
    config = load_config(str(path))
    tenant = config.tenants["business-1"]
    assert tenant.numbers == ("+15550100001", "+15550100002")
    assert config.tenant_for("business-1") is tenant
    assert config.tenant_for(None, "+1 (555) 010-0002") is tenant
    assert config.tenant_for("nobody", "+19999999999") is config.default_tenant
    assert config.default_tenant.plan == "basic"


def test_refuse_policy():
    config = parse_config({"unknown_tenant": "refuse", "tenants": {"b": {"numbers": ["+15550100"]}}})
    with pytest.raises(NoTenant) as refused:
        config.tenant_for("x", "+15559990001")
    assert "businessId x and number +1555*****01 match no tenant" in refused.value.describe()
    assert config.tenant_for(None, "+15550100").id == "b"


def test_without_refuse_an_unknown_call_gets_the_default_section_or_none():
    with_default = parse_config({"default": {"plan": "basic"}, "tenants": {"b": {"numbers": ["+15550100"]}}})
    assert with_default.tenant_for("x", "+1999") is with_default.default_tenant
    assert parse_config({}).tenant_for("x", "+1999") is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"tenant": {}}, "unknown top-level key(s) tenant"),
        ({"tenants": {"b": {"number": ["+1555"]}}}, "tenants.b: unknown key(s) number"),
        ({"tenants": {"b": {"numbers": "+1555"}}}, "tenants.b.numbers: expected list"),
        ({"tenants": {"b": {"numbers": ["call me"]}}}, "is not a phone number"),
        ({"tenants": {"b": {"max_calls": -1}}}, "max_calls: must be 0 or more"),
        ({"tenants": {"b": {"max_calls": True}}}, "max_calls: expected int"),
        ({"tenants": {"a": {"numbers": ["+15550100"]}, "b": {"numbers": ["+15550100"]}}}, "already belongs to tenant a"),
        ({"tenants": {"default": {}}}, "write it as [default]"),
        ({"tenants": {"bad id": {}}}, "a tenant id is"),
        ({"unknown_tenant": "drop"}, "unknown_tenant"),
        (
            {"unknown_tenant": "refuse", "default": {}, "tenants": {"b": {"numbers": ["+15550100"]}}},
            "the [default] section would never apply",
        ),
        ({"unknown_tenant": "refuse"}, "with no [tenants.ID] would refuse every call"),
    ],
)
def test_mistakes_are_named_with_their_path(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[tenants\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
