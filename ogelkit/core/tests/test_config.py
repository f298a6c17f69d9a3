"""Config loading: interpolation, every error at once, plugin options, tiers."""

import subprocess
import sys

import attrs
import pytest

import ogelkit
from ogelkit.config import parse_config
from ogelkit.config.errors import ConfigErrors
from ogelkit.testing import config_errors, isolated_plugins, minimal_config, test_secret_key


@attrs.define(kw_only=True)
class DemoOptions:
    dsn: str = ogelkit.option(doc="Where the demo server is.")
    port: int = ogelkit.option(5432, validator=ogelkit.validators.positive, doc="A port.")
    timeout: ogelkit.Duration = ogelkit.option(5.0, validator=ogelkit.validators.positive,
                                               doc="A timeout.")
    pool: int | None = ogelkit.option(10, doc="A pool size.")


class DemoBackend(ogelkit.Backend):
    type_name = "demo"
    protocol = "demo"
    Config = DemoOptions


@attrs.define(kw_only=True)
class NoteOptions:
    mode: str = ogelkit.option("warn", doc="Mode.")


class NoteLayer(ogelkit.Layer):
    type_name = "note"
    Config = NoteOptions

    def on_complete(self, op):
        pass


class DemoPlugin:
    @ogelkit.hookimpl
    def ogelkit_register_backends(self, register):
        register.backend(DemoBackend)

    @ogelkit.hookimpl
    def ogelkit_register_layers(self, register):
        register.layer(NoteLayer)


@pytest.fixture
def plugins():
    return isolated_plugins(("demo", DemoPlugin()))


def test_minimal_config_is_valid(plugins):
    cfg = parse_config(minimal_config(), plugins, env={})
    assert cfg.listen.http == 0
    assert list(cfg.tiers) == ["free", "starter", "pro", "enterprise"]
    assert cfg.state is None


def test_interpolation_forms(plugins):
    text = minimal_config('''
[backends.main]
type = "demo"
dsn = "postgresql://${DB_USER}@${DB_HOST:-localhost}/x${NONE:-}"
port = "${DB_PORT:-6543}"
timeout = "${T:?the timeout must be set}"
[gateway.ignored]
''').replace("[gateway.ignored]\n", "")
    cfg = parse_config(text, plugins, env={"DB_USER": "u", "T": "2s"})
    backend = cfg.backends["main"].options
    assert backend.dsn == "postgresql://u@localhost/x"
    assert backend.port == 6543 and backend.timeout == 2.0


def test_missing_variable_with_message(plugins):
    text = minimal_config('[backends.main]\ntype = "demo"\ndsn = "${DSN:?set DSN to the server URL}"\n')
    errors = config_errors(text, plugins)
    assert errors == ["config.toml: backends.main.dsn: environment variable DSN is not set: set DSN to "
                      "the server URL (expected $DSN to be set, found nothing)"]


def test_dollar_escape(plugins):
    text = minimal_config('[backends.main]\ntype = "demo"\ndsn = "a$${literal}"\n')
    assert parse_config(text, plugins, env={}).backends["main"].options.dsn == "a${literal}"


def test_four_problems_in_one_run(plugins):
    """Unknown key, wrong type, a database on an undefined backend, a missing variable."""
    text = minimal_config('''
[backends.main]
type = "demo"
dsn = "${MISSING_DSN}"
prot = 1
[backends.other]
type = "demo"
dsn = "x"
port = "54x32"
[tenants.acme.databases.main]
backend = "mian"
''')
    errors = config_errors(text, plugins)
    assert len(errors) == 4, errors
    joined = "\n".join(errors)
    assert "backends.main.dsn: environment variable MISSING_DSN is not set" in joined
    assert 'backends.main.prot: unknown option "prot"' in joined and 'Did you mean "port"?' in joined
    assert ('backends.other.port: wrong type (expected an integer, found the string "54x32")'
            in joined)
    assert 'tenants.acme.databases.main.backend: no backend named "mian"' in joined
    assert 'Did you mean "main"?' in joined


def test_every_option_validator_error_is_reported_at_its_own_path(plugins):
    """attrs stops at the first failing validator; the loader reports each one."""
    errors = config_errors(minimal_config('''
[backends.main]
type = "demo"
dsn = "x"
port = 0
timeout = "0s"
'''), plugins)
    assert errors == [
        "config.toml: backends.main.port: port must be greater than 0 (found the integer 0)",
        'config.toml: backends.main.timeout: timeout must be greater than 0 (found the string '
        '"0s")',
    ], errors


def test_unknown_types_and_not_installed(plugins):
    text = minimal_config('''
[backends.a]
type = "dmeo"
dsn = "x"
[backends.b]
type = "redis"
[[layers]]
type = "nots"
[[layers]]
type = "ratelimit"
''')
    errors = config_errors(text, plugins)
    joined = "\n".join(errors)
    assert 'backends.a.type: unknown backend type "dmeo"' in joined and '"demo"' in joined
    assert 'backends.b.type: backend type "redis" is not installed' in joined
    assert "pip install ogelkit-redis" in joined
    assert 'layers[0].type: unknown layer type "nots"' in joined and 'Did you mean "note"?' in joined
    assert "pip install ogelkit-layer-ratelimit" in joined


def test_layers_keep_config_order_and_need_unique_names(plugins):
    text = minimal_config('''
[[layers]]
type = "note"
name = "first"
[[layers]]
type = "note"
mode = "enforce"
[[layers]]
type = "note"
''')
    errors = config_errors(text, plugins)
    assert errors == ['config.toml: layers[2].name: layer name "note" is used twice (also layers[1])'
                      '\n  Give one of them a distinct name = "...".']
    cfg = parse_config(text.rsplit("[[layers]]", 1)[0], plugins, env={})
    assert [(s.name, s.options.mode) for s in cfg.layers] == [("first", "warn"), ("note", "enforce")]


def test_tiers_override_partially_and_add_new(plugins):
    text = minimal_config('''
[tiers.free]
connections = 3
ops_per_second = "unlimited"
statement_timeout = "5s"
[tiers.free.price]
base = 1.5
[tiers.team]
base = "pro"
rank = 5
connections = 75
''')
    cfg = parse_config(text, plugins, env={})
    free = cfg.tiers["free"]
    assert (free.connections, free.ops_per_second, free.statement_timeout) == (3, None, 5.0)
    assert free.burst == 20 and free.price.base == 1.5 and free.price.included_vcpu_hours == 5
    team = cfg.tiers["team"]
    assert team.connections == 75 and team.work_mem == cfg.tiers["pro"].work_mem
    assert list(cfg.tiers)[-1] == "team"


def test_tier_errors_and_unknown_tenant_tier(plugins):
    text = minimal_config('''
[tiers.free]
conections = 3
work_mem = "lots"
[tenants.acme]
tier = "gold"
''')
    joined = "\n".join(config_errors(text, plugins))
    assert 'tiers.free.conections: unknown option "conections"' in joined
    assert "tiers.free.work_mem: " in joined and 'found the string "lots"' in joined
    assert 'tenants.acme.tier: unknown tier "gold"' in joined


def test_syntax_error_and_unknown_table(plugins):
    assert "not valid TOML" in config_errors("[listen\n", plugins)[0]
    errors = config_errors(minimal_config("[lisen]\nhost='x'\n"), plugins)
    assert 'unknown table "lisen"' in errors[0] and 'Did you mean "listen"?' in errors[0]


def test_bad_secret_key_and_urls(plugins):
    text = ('[control]\nurl = "mysql://x"\nsecret_key = "short"\n'
            '[state]\nurl = "http://redis"\n')
    joined = "\n".join(config_errors(text, plugins))
    assert "control.url: unsupported control plane URL" in joined
    assert "control.secret_key: not a valid key" in joined
    assert "state.url: unsupported state URL" in joined
    assert test_secret_key() not in joined


def test_missing_control_table(plugins):
    errors = config_errors("[listen]\nhttp = 1\n", plugins)
    assert errors == ['config.toml: control: missing required table (expected [control] with '
                      'url = "sqlite:///..." and secret_key)']


def test_error_object_fields(plugins):
    with pytest.raises(ConfigErrors) as info:
        parse_config(minimal_config("[listen]\nhttp = true\n").replace('[listen]\nhost = "127.0.0.1"\n'
                                                                         'http = 0\n\n', ""),
                     plugins, env={}, file="x.toml")
    (err,) = info.value.errors
    assert (err.file, err.path, err.expected, err.found) == ("x.toml", "listen.http", "an integer",
                                                            "true")


def test_check_command_exit_codes(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(minimal_config())
    bad = tmp_path / "bad.toml"
    bad.write_text(minimal_config("[gateway]\ndrain = 1\n").replace(
        '[gateway]\ndrain_timeout = "5s"\nadmin_token = "test-admin-token"\n\n', ""))
    ok = subprocess.run([sys.executable, "-m", "ogelkit", "check", str(good)], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"{good}: ok" in ok.stdout
    fail = subprocess.run([sys.executable, "-m", "ogelkit", "check", str(bad)], capture_output=True,
                          text=True)
    assert fail.returncode == 2
    assert f'{bad}: gateway.drain: unknown option "drain"' in fail.stderr
    assert "1 problem found" in fail.stderr
