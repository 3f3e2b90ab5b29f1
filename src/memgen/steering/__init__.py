"""Steering (stage `steer`; the package is not named `steer` so that `memgen.steer` stays the
function): shift selected neurons by alpha x NMD at inference time, with controls."""
