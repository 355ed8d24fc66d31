"""Fault points for the engine's crash tests (see ``l2c.faults``)."""

from l2c.faults import FaultInjected, fault_point, set_faults

__all__ = ["FaultInjected", "fault_point", "set_faults"]
