"""``ogelkit usage show``: per-database totals and an invoice preview."""

from __future__ import annotations

import attrs
import click

from ogelkit.billing import invoice, month_range
from ogelkit.cli.common import CliState, echo_json, echo_table, opened_store, run_async
from ogelkit.control.records import USAGE_FIELDS_V2
from ogelkit.control.store import NotFound


@click.group()
def usage() -> None:
    """Read metered usage."""


@usage.command("show")
@click.argument("tenant")
@click.option("--month", help="YYYY-MM (default: the current month, UTC).")
@click.option("--database", help="Only this database.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(state: CliState, tenant: str, month: str | None, database: str | None,
         as_json: bool) -> None:
    """Usage of TENANT per database, with an invoice preview from the price book."""
    config = state.config(core_only=True)
    try:
        start, end, label = month_range(month)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month") from exc

    async def go():
        async with opened_store(config) as store:
            try:
                record = await store.require_tenant(tenant)
            except NotFound as exc:
                raise click.ClickException(str(exc)) from exc
            # The invoice covers the whole tenant (base price and included hours are per
            # tenant); --database only narrows the table.
            return record, await store.usage_totals(tenant, start, end)

    record, every = run_async(go)
    totals = [t for t in every if database is None or t.database == database]
    tier = config.tiers.get(record.tier) or next(iter(config.tiers.values()))
    inv = invoice(tier, label, every)
    if as_json:
        echo_json({"tenant": tenant, "month": label, "tier": record.tier,
                   "databases": [{"database": t.database, **_typed(t.values)} for t in totals],
                   "invoice": attrs.asdict(inv)})
        return
    click.echo(f"usage of {tenant} in {label} (tier {record.tier})")
    echo_table([[_label(t.database), int(t["operations"]), int(t["rejected"]), int(t["errors"]),
                 f"{t['duration']:.3f}", int(t["bytes_in"]), int(t["bytes_out"]), int(t["rows"]),
                 int(t["written"]), int(t["connections"]), f"{t['connection_seconds']:.1f}",
                 f"{t['vcpu_seconds']:.4f}", f"{t['gb_seconds']:.4f}", int(t["storage_bytes"])]
                for t in totals],
               ["DATABASE", "OPS", "REJECTED", "ERRORS", "TIME_S", "BYTES_IN", "BYTES_OUT",
                "ROWS", "WRITTEN", "CONNS", "CONN_S", "VCPU_S", "GB_S", "STORAGE_B"])
    refused = [t for t in totals if any(t[f] for f in USAGE_FIELDS_V2)]
    if refused:
        click.echo("\nrefusals:")
        echo_table([[_label(t.database), *(int(t[f]) for f in USAGE_FIELDS_V2)] for t in refused],
                   ["DATABASE", "CONN_CAP", "RATE", "COST", "BANNED", "TIMEOUTS", "AUTH_FAIL"])
    scope = "all databases" if database is None else f"all databases, not only {database}"
    click.echo(f"\ninvoice preview ({inv.tier}, {scope}):")
    click.echo(f"  base                {inv.base:10.2f}")
    click.echo(f"  vCPU-hours {inv.vcpu_hours:9.4f} (included {inv.included_vcpu_hours:g})"
               f"  overage {inv.vcpu_overage:10.2f}")
    click.echo(f"  GB-hours   {inv.gb_hours:9.4f} (included {inv.included_gb_hours:g})"
               f"  overage {inv.gb_overage:10.2f}")
    click.echo(f"  total               {inv.total:10.2f}")


_REAL = frozenset({"duration", "connection_seconds", "vcpu_seconds", "gb_seconds"})


def _typed(values: dict[str, float]) -> dict[str, float | int]:
    """Counts as integers in JSON (the store sums them as numbers)."""
    return {k: (float(v) if k in _REAL else round(v)) for k, v in values.items()}


def _label(database: str) -> str:
    # Refused logins that never reached a database are recorded under the empty name.
    return database or "(no database)"
