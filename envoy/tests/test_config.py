"""An invalid filter configuration makes Envoy refuse the plugin: it never serves traffic, and its
log names the offending field and the problem (`tollgate config: <field.path>: <problem>`)."""
import pytest

from harness import Envoy, EnvoyFailedToStart

INVALID = [
    ({"routng": {}}, "routng"),
    ({"max_request_body_bytes": 0}, "max_request_body_bytes"),
    ({"routing": {"rules": [{"name": "r", "match": {"model": 5}}]}}, "routing.rules[0]"),
    ({"pricing": {"unknown_model": "guess"}}, "pricing"),
    ("{not json", "tollgate config"),
]


@pytest.mark.parametrize("config,field", INVALID, ids=[f for _, f in INVALID])
def test_invalid_config_is_refused_naming_the_field(workdir, mock, config, field):
    with pytest.raises(EnvoyFailedToStart) as failed:
        e = Envoy(workdir, mock.port, plugin_config=config, name=f"invalid-{abs(hash(field))}", ready_timeout=20)
        e.close()  # only reached if Envoy wrongly came up
    log = failed.value.log
    lines = [l for l in log.splitlines() if "tollgate config:" in l]
    assert lines, f"no 'tollgate config:' line in Envoy's log:\n{log[-3000:]}"
    assert any(field in l for l in lines), f"the log line does not name {field!r}: {lines}"
