"""Steering: shift selected neurons by alpha x NMD at inference time, with controls."""
