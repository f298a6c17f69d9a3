"""`ogelkit check` with the installed plugins reports every problem at once, exit code 2."""

import os
import subprocess
import sys

from ogelkit.testing import test_secret_key


def test_four_problems_in_one_run_with_exit_code_2(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'''
[control]
url = "sqlite:///{tmp_path}/cp.db"
secret_key = "{test_secret_key()}"

[backends.pg]
type = "postgres"
dsn = "${{PG_ADMIN_DSN}}"
pool_mdoe = "transaction"
pool_size = "ten"

[tenants.acme.databases.main]
backend = "pgg"
''')
    env = {k: v for k, v in os.environ.items() if k != "PG_ADMIN_DSN"}
    result = subprocess.run([sys.executable, "-m", "ogelkit", "check", str(config)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2
    err = result.stderr
    assert f"{config}: backends.pg.dsn: environment variable PG_ADMIN_DSN is not set" in err
    assert f'{config}: backends.pg.pool_mdoe: unknown option "pool_mdoe"' in err
    assert 'Did you mean "pool_mode"?' in err
    assert (f'{config}: backends.pg.pool_size: wrong type (expected an integer, found the '
            'string "ten")') in err
    assert f'{config}: tenants.acme.databases.main.backend: no backend named "pgg"' in err
    assert 'Did you mean "pg"?' in err
    assert f"{config}: 4 problems found" in err
