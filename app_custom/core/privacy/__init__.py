"""Privacy core: DP-SGD, DP-FedAvg, RDP accounting, privacy budgets and CKKS secure aggregation.

Pure code with no FLARE import; adapters in ``app_custom.flare`` call it. Every setting is validated before any data
is touched, and every invalid setting raises a subclass of ``PrivacyError`` (see ``errors``) instead of letting
data through unprotected.
"""

from app_custom.core.privacy.errors import (
    BudgetExceeded,
    HEConfigError,
    InvalidPrivacyInput,
    InvalidPrivacySetting,
    PrivacyError,
)

__all__ = ["BudgetExceeded", "HEConfigError", "InvalidPrivacyInput", "InvalidPrivacySetting", "PrivacyError"]
