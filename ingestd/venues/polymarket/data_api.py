"""Polymarket Data API `GET /trades`: requests out, trades in, and its rate limit. No I/O.

One endpoint serves both of our needs:
- `?user=<wallet>`: a watched wallet's fills (`takerOnly=false`, so fills where the whale was the
  maker show up too), polled per enabled whale;
- `?market=<condition id>`: a market's tape (`takerOnly=true`: one row per match), fetched to fill
  what the WebSocket missed while it was down.
Pages come newest first; `start`/`end` bound the time (epoch seconds, inclusive) where the server
honours them, and we filter again on our side because not every variant of the API does.

A body that is not a JSON array is a `Problem` (the poll is retried, nothing advances); a single
row with unusable fields is skipped and reported in `BadRow`s, because retrying cannot fix it.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Union

import msgspec

MAX_LIMIT = 10_000  # the API's own caps on `limit` and `offset`
MAX_OFFSET = 10_000

MALFORMED_BODY = "data_api_malformed"
NOT_A_LIST = "data_api_not_a_list"
BAD_ROW = "data_api_bad_row"

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_TOKEN_ID = re.compile(r"[0-9]{1,80}")


class DataTrade(msgspec.Struct, gc=False):
    wallet: str  # proxyWallet, lowercase
    side: str  # "BUY" or "SELL": the wallet's side
    asset: str  # outcome token id
    condition_id: str
    size: float
    price: float
    timestamp_s: int
    tx_hash: str
    title: str | None = None
    outcome: str | None = None
    pseudonym: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies one fill: the transaction and the token it moved."""
        return (self.tx_hash, self.asset)


class _Row(msgspec.Struct, gc=False):
    proxyWallet: str
    side: str
    asset: Union[str, int]
    conditionId: str
    size: Union[float, str]
    price: Union[float, str]
    timestamp: Union[int, str]
    transactionHash: str
    title: Union[str, None] = None
    outcome: Union[str, None] = None
    pseudonym: Union[str, None] = None
    name: Union[str, None] = None


class Problem(msgspec.Struct, gc=False):
    kind: str
    detail: str


@dataclass(frozen=True)
class Page:
    trades: list[DataTrade]
    rows: int  # rows in the body, usable or not (decides whether another page follows)
    bad_rows: list[str]  # why each unusable row was skipped


_rows = msgspec.json.Decoder(list[msgspec.Raw])
_row = msgspec.json.Decoder(_Row, strict=False)


def parse_trades(body: bytes) -> Page | Problem:
    try:
        raws = _rows.decode(body)
    except msgspec.ValidationError as exc:
        return Problem(NOT_A_LIST, str(exc)[:200])
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Problem(MALFORMED_BODY, f"{exc}; body starts {body[:60]!r}")
    trades: list[DataTrade] = []
    bad: list[str] = []
    for raw in raws:
        try:
            trades.append(_trade(_row.decode(raw)))
        except (msgspec.DecodeError, ValueError) as exc:
            bad.append(str(exc)[:200])
    return Page(trades, len(raws), bad)


def _number(value: float | str, what: str, high: float) -> float:
    number = float(value)  # a decimal string or a JSON number; ValueError for anything else
    if not (0.0 < number <= high) or math.isnan(number):
        raise ValueError(f"{what} {value!r} out of range")
    return number


def _trade(row: _Row) -> DataTrade:
    if not _ADDRESS.fullmatch(row.proxyWallet):
        raise ValueError(f"proxyWallet {row.proxyWallet!r:.50} is not an address")
    side = row.side.upper()
    if side not in ("BUY", "SELL"):
        raise ValueError(f"side {row.side!r:.20}")
    asset = str(row.asset)
    if not _TOKEN_ID.fullmatch(asset):
        raise ValueError(f"asset {asset!r:.90} is not a token id")
    ts = int(row.timestamp)
    if not 0 < ts < 10**11:
        raise ValueError(f"timestamp {row.timestamp!r} is not epoch seconds")
    if not row.transactionHash or len(row.transactionHash) > 100:
        raise ValueError("transactionHash missing")
    return DataTrade(
        row.proxyWallet.lower(), side, asset, row.conditionId, _number(row.size, "size", 1e12),
        _number(row.price, "price", 1.0), ts, row.transactionHash.lower(), row.title, row.outcome,
        row.pseudonym or row.name or None,
    )


# --- requests ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    path: str
    params: dict[str, str]


def user_trades(address: str, *, start_s: int | None, limit: int, offset: int = 0) -> Request:
    params = {"user": address, "limit": str(limit), "offset": str(offset), "takerOnly": "false"}
    if start_s is not None:
        params["start"] = str(max(0, start_s))
    return Request("/trades", params)


def market_trades(condition_id: str, *, start_s: int | None, limit: int, offset: int = 0) -> Request:
    params = {"market": condition_id, "limit": str(limit), "offset": str(offset), "takerOnly": "true"}
    if start_s is not None:
        params["start"] = str(max(0, start_s))
    return Request("/trades", params)


def more_pages(page: Page, *, limit: int, offset: int, start_s: int | None) -> bool:
    """Whether the page after this one may still hold trades at or after `start_s`."""
    if page.rows < limit or offset + limit > MAX_OFFSET:
        return False
    if start_s is not None and page.trades and min(t.timestamp_s for t in page.trades) < start_s:
        return False  # newest first: everything further is older than we asked for
    return True


# --- rate limit ----------------------------------------------------------------------------------

class RequestWindow:
    """A sliding-window request budget (the Data API allows 200 requests per 10 s), plus the
    pause a 429's Retry-After imposes on every request."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = max(1, limit)
        self.window_s = window_s
        self._sent: deque[float] = deque()
        self._blocked_until = -math.inf

    def delay_before(self, now: float) -> float:
        """Seconds to wait before the next request may go (0: now)."""
        while self._sent and self._sent[0] <= now - self.window_s:
            self._sent.popleft()
        wait = self._blocked_until - now
        if len(self._sent) >= self.limit:
            wait = max(wait, self._sent[0] + self.window_s - now)
        return max(0.0, wait)

    def spend(self, now: float) -> None:
        self._sent.append(now)

    def retry_after(self, header: str | None, now: float, default_s: float = 1.0) -> float:
        """A 429 arrived: block every request until its Retry-After (seconds) has passed."""
        try:
            delay = float(header) if header is not None else default_s
        except ValueError:
            delay = default_s
        delay = min(max(delay, 0.0), 300.0) if math.isfinite(delay) else default_s
        self._blocked_until = max(self._blocked_until, now + delay)
        return delay
