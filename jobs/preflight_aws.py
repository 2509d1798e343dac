"""Preflight checks of a sweep on AWS, made before any instance is launched (a failure refuses
the submission, exit 2, and names the sweep field to fix):

- aws-credentials: boto3's default chain finds credentials and AWS accepts them (STS
  GetCallerIdentity, which needs no IAM grant).
- aws-ssh-cidrs: `provider.ssh_cidrs` is set (the provider refuses to launch without it).
- aws-regions: every region in `provider.regions` is an EC2 region and offers at least one of
  the sweep's types, and every type is offered in at least one of the regions.
"""

from __future__ import annotations

from jobs.preflight import CheckResult
from jobs.providers.aws import SSH_CIDRS_HELP, AWSProvider
from jobs.providers.aws_errors import call
from jobs.providers.errors import AuthError, ProviderError
from jobs.spec import SweepSpec


def aws_checks(spec: SweepSpec, provider: AWSProvider) -> list[CheckResult]:
    results = [_credentials(provider)]
    if not spec.provider.ssh_cidrs:
        results.append(CheckResult(check="aws-ssh-cidrs", status="failed", message=SSH_CIDRS_HELP))
    else:
        cidrs = ", ".join(spec.provider.ssh_cidrs)
        message = f"SSH admitted only from {cidrs}"
        results.append(CheckResult(check="aws-ssh-cidrs", status="passed", message=message))
    if results[0].status == "passed":
        results.append(_regions(provider, spec.provider.instance_types or []))
    return results


def _credentials(provider: AWSProvider) -> CheckResult:
    sts = provider.client("sts", provider.regions[0])
    try:
        identity = call("GetCallerIdentity", sts.get_caller_identity)
    except AuthError as exc:
        return CheckResult(check="aws-credentials", status="failed", message=str(exc))
    except ProviderError as exc:
        message = f"SKIPPED, not passed: could not reach AWS ({exc})"
        return CheckResult(check="aws-credentials", status="skipped", message=message)
    message = f"AWS accepts them (account {identity.get('Account', '?')})"
    return CheckResult(check="aws-credentials", status="passed", message=message)


def _regions(provider: AWSProvider, named_types: list[str]) -> CheckResult:
    known = set(provider.available_regions())
    unknown = [r for r in provider.regions if r not in known]
    if unknown:
        message = f"provider.regions: {', '.join(unknown)} not an EC2 region"
        return CheckResult(check="aws-regions", status="failed", message=message)
    try:
        offered = {region: provider.offered_types(region) for region in provider.regions}
    except ProviderError as exc:
        message = f"SKIPPED, not passed: could not list instance type offerings ({exc})"
        return CheckResult(check="aws-regions", status="skipped", message=message)
    problems = [
        f"provider.regions: {region} offers none of {', '.join(provider.allowed_types)}"
        for region, types in offered.items()
        if not types
    ]
    everywhere = {t for types in offered.values() for t in types}
    problems += [
        f"provider.instance_types: {t} is offered in none of {', '.join(provider.regions)}"
        for t in named_types
        if t not in everywhere
    ]
    if problems:
        return CheckResult(check="aws-regions", status="failed", message="; ".join(problems))
    regions = ", ".join(f"{r}: {len(t)} type(s)" for r, t in offered.items())
    return CheckResult(check="aws-regions", status="passed", message=regions)
