from .gp_o2cap import GPO2CAP

__all__ = ["GPO2CAP"]
