"""CLI commands of the intelligence layer: ``tenants advise`` and ``intelligence calibration``.

Both read only the control plane (usage rollups, layer reports), so they work without a
running gateway, against whichever control plane the config names.
"""

from __future__ import annotations

from typing import Any

import click

from ogelkit import NotFound, default_options
from ogelkit.cli.common import CliState, echo_json, echo_table, opened_store, run_async
from ogelkit_layer_intelligence.layer import REPORT_LAYER
from ogelkit_layer_intelligence.options import IntelligenceOptions
from ogelkit_layer_intelligence.report import tenant_advice


def layer_options(config) -> IntelligenceOptions:
    """The options of the config's intelligence layer, or the defaults without one."""
    for spec in config.layers:
        if spec.type == "intelligence":
            return spec.options
    return default_options(IntelligenceOptions)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


@click.command("advise")
@click.argument("tenant")
@click.option("--days", type=click.FloatRange(min=1 / 24, max=366), default=30.0,
              show_default=True, help="Look back this many days.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def advise_command(state: CliState, tenant: str, days: float, as_json: bool) -> None:
    """Recommend a tier for TENANT, with the reasons, from its recent usage and refusals."""
    config = state.config()
    options = layer_options(config)

    async def go():
        async with opened_store(config) as store:
            try:
                return await tenant_advice(store, config.tiers, options, tenant, days)
            except NotFound as exc:
                raise click.ClickException(str(exc)) from exc

    advice, calibration, tier = run_async(go)
    if as_json:
        echo_json({**advice.as_dict(), "calibration": calibration})
        return
    click.echo(f"advice for {tenant} (tier {tier.name}, last {days:g} days)")
    if advice.recommended_tier:
        click.echo(f"recommended tier: {advice.recommended_tier}")
    else:
        click.echo(f"recommended tier: stay on {tier.name}")
    for rec in advice.recommendations:
        click.echo(f"  - [{rec.kind}] {rec.message}")
    for note in advice.notes:
        click.echo(f"  note: {note}")
    for backend, entry in calibration.items():
        click.echo(f"  calibration on {backend}: cost ceiling {_fmt(entry.get('configured_ceiling'))}"
                   f", suggested {_fmt(entry.get('suggested_ceiling'))} for a p99 of "
                   f"{entry['p99_target_s']:g}s ({entry.get('samples')} samples)")


@click.group("intelligence")
def intelligence_group() -> None:
    """Findings of the intelligence layer."""


@intelligence_group.command("calibration")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def calibration_command(state: CliState, as_json: bool) -> None:
    """Suggested cost ceilings per backend and tier, from observed cost/duration pairs."""
    config = state.config()

    async def go():
        async with opened_store(config) as store:
            return await store.layer_reports(REPORT_LAYER)

    reports = [r for r in run_async(go) if r.subject.startswith("calibration:")]
    data = {r.subject.split(":", 1)[1]: {**r.body, "gateway": r.gateway,
                                         "updated_at": r.updated_at} for r in reports}
    if as_json:
        echo_json(data)
        return
    if not data:
        click.echo("no calibration yet: the intelligence layer writes one every "
                   "report_interval once the cost layer has costed operations")
        return
    for backend, body in data.items():
        fit = body.get("fit") or {}
        click.echo(f"backend {backend}: {body.get('samples')} samples, {body.get('status')}")
        if fit:
            click.echo(f"  duration ~ {fit['intercept_s']:.6f} s + {fit['seconds_per_cost_unit']:.3e}"
                       f" s/unit x cost; p99 slowdown x{fit['p99_slowdown']:.2f}; "
                       f"p95 cost {_fmt(body.get('p95_cost'))}")
        rows = [[tier, f"{e['p99_target_s']:g}s", _fmt(e.get("configured_ceiling")),
                 _fmt(e.get("cost_at_target")), _fmt(e.get("suggested_ceiling"))]
                for tier, e in body.get("tiers", {}).items()]
        if rows:
            echo_table(rows, ["TIER", "P99_TARGET", "CONFIGURED", "COST_AT_TARGET", "SUGGESTED"])


def add_commands(cli: click.Group) -> None:
    tenants = cli.commands.get("tenants")
    if isinstance(tenants, click.Group) and "advise" not in tenants.commands:
        tenants.add_command(advise_command)
    if "intelligence" not in cli.commands:
        cli.add_command(intelligence_group)
