"""Each feed family's `[feeds.<family>]` schema lives beside its code, in
`ingestd/venues/<family>/settings.py`, and registers itself with `@feed_family`. Importing them
here, from the bottom of `ingestd.config`, makes every family known to the config loader, while
the feeds' own code (sockets, HTTP clients) is imported only by the instance that runs them."""
from ingestd.venues.polymarket import settings as _polymarket  # noqa: F401
from ingestd.venues.uniswap import settings as _uniswap  # noqa: F401
from ingestd.venues.coingecko import settings as _coingecko  # noqa: F401
from ingestd.venues.evm import settings as _evm  # noqa: F401
from ingestd.venues.bybit import settings as _bybit  # noqa: F401
