"""Sizes of Azure Synapse and Microsoft Fabric compute, as exact units the rate cards price.

Pure lookups and arithmetic (no Airflow, no SDK) shared by ``hooks/synapse_costs.py`` and
``hooks/fabric_costs.py``:

* Synapse dedicated SQL pool service objectives ``DW100c`` .. ``DW30000c`` are multiples of the
  ``synapse/DW100c_HOUR`` price (``DW1000c`` = 10 x DW100c); a paused pool bills no compute.
* Synapse Spark pool node sizes have a fixed vCore count (Small 4 .. XXXLarge 80), billed per vCore-hour.
* Serverless SQL bills data processed per TB (``sys.dm_external_data_processed`` reports MB; Azure rounds each
  query up to the next MB with a 10 MB minimum, so the MB figure is already what is billed).
* Fabric capacity ``F<n>`` has ``n`` capacity units (CU), billed per CU-hour while the capacity is not paused.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

from finops_provider.core.money import MONEY_CONTEXT, to_decimal

#: the documented Gen2 dedicated SQL pool service objectives (cDWU)
DEDICATED_DWU = (100, 200, 300, 400, 500, 1000, 1500, 2000, 2500, 3000, 5000, 6000, 7500, 10000, 15000, 30000)
#: Synapse Spark pool node size -> vCores per node (Memory Optimized family)
SPARK_NODE_VCORES: dict[str, int] = {
    "small": 4,
    "medium": 8,
    "large": 16,
    "xlarge": 32,
    "xxlarge": 64,
    "xxxlarge": 80,
}
#: Fabric F SKUs (capacity units = the number after F)
FABRIC_SKUS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
#: dedicated SQL pool / Fabric capacity states that bill no compute (storage is billed separately)
PAUSED_STATES = frozenset({"paused", "pausing", "suspended", "suspending"})
MB_PER_TB = Decimal(1_000_000)
_DW_RE = re.compile(r"^DW(\d+)c$", re.IGNORECASE)
_F_RE = re.compile(r"^F(\d+)$", re.IGNORECASE)


def dw100c_multiple(service_objective: str) -> Decimal:
    """How many ``DW100c`` units a dedicated SQL pool SKU is (``DW1000c`` -> 10).

    :raises ValueError: for anything but the documented Gen2 objectives ``DW100c`` .. ``DW30000c``.
    """
    m = _DW_RE.match(str(service_objective or "").strip())
    if not m or int(m.group(1)) not in DEDICATED_DWU:
        raise ValueError(
            f"{service_objective!r} is not a dedicated SQL pool service objective; use one of "
            f"{', '.join(f'DW{n}c' for n in DEDICATED_DWU)}"
        )
    return Decimal(int(m.group(1))) / Decimal(100)


def spark_node_vcores(node_size: str) -> int:
    """vCores of one Synapse Spark node (``Medium`` -> 8)."""
    try:
        return SPARK_NODE_VCORES[str(node_size or "").strip().lower()]
    except KeyError:
        raise ValueError(
            f"{node_size!r} is not a Synapse Spark node size; use one of {', '.join(SPARK_NODE_VCORES)}"
        ) from None


def fabric_capacity_units(sku: str) -> Decimal:
    """Capacity units of a Fabric F SKU (``F64`` -> 64)."""
    m = _F_RE.match(str(sku or "").strip())
    if not m or int(m.group(1)) not in FABRIC_SKUS:
        raise ValueError(f"{sku!r} is not a Fabric capacity SKU; use one of {', '.join(f'F{n}' for n in FABRIC_SKUS)}")
    return Decimal(int(m.group(1)))


def megabytes_to_tb(mb: object) -> Decimal:
    """Serverless SQL data processed, MB -> TB (Azure meters decimal TB: 10^6 MB)."""
    with localcontext(MONEY_CONTEXT):
        return to_decimal(mb, field_name="data_processed_mb") / MB_PER_TB


def is_paused(state: str | None) -> bool:
    return str(state or "").strip().lower() in PAUSED_STATES
