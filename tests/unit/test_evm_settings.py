"""`[feeds.evm]`: keys, defaults, problems named by key, and the shipped section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingestd.config import ConfigError, load_config, options_of, parse_config
from ingestd.secrets import Secret
from ingestd.venues.evm.settings import DEFAULT_TOKENS, EvmFeedConfig, Token

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "ingestd.toml"


def evm(text: str, environ: dict | None = None) -> EvmFeedConfig:
    return parse_config("[feeds.evm]\n" + text, environ=environ or {}).feeds["evm"]


def problems(text: str, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config("[feeds.evm]\n" + text, environ=environ or {})
    return caught.value.problems


def test_defaults():
    cfg = evm("")
    assert cfg.chain == "ethereum"
    assert cfg.tokens == DEFAULT_TOKENS
    assert cfg.labels == ()
    assert (cfg.confirmations, cfg.start_block, cfg.max_block_range) == (12, None, 2000)


def test_tokens_labels_and_secret_url():
    cfg = evm(
        'rpc_url = { env = "MAINNET_RPC" }\n'
        'tokens = [{ address = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", symbol = "USDC" },\n'
        '          { address = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", symbol = "WETH", decimals = 18 }]\n'
        '[feeds.evm.labels]\n'
        '"0x28C6c06298d514Db089934071355E5743bf21d60" = "binance-hot-14"\n'
        '"0x99c9fc46f92e8a1c0dec1b1747d010903e884be1" = "bridge:optimism"\n',
        environ={"MAINNET_RPC": "https://mainnet.infura.io/v3/secret-key"},
    )
    assert cfg.tokens == (Token("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "USDC", None),
                          Token("0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", "WETH", 18))
    assert dict(cfg.labels) == {"0x28c6c06298d514db089934071355e5743bf21d60": "binance-hot-14",
                                "0x99c9fc46f92e8a1c0dec1b1747d010903e884be1": "bridge:optimism"}
    assert isinstance(cfg.rpc_url, Secret) and cfg.rpc_url.reveal().endswith("secret-key")
    assert "secret-key" not in repr(cfg)


def test_env_var_overrides_the_url():
    cfg = evm('rpc_url = "http://127.0.0.1:8545"', environ={"ETH_RPC_URL": "https://eth.example/rpc"})
    assert cfg.rpc_url == "https://eth.example/rpc"


def test_every_problem_is_named_by_its_key():
    found = problems(
        'chain = "Main Net"\n'
        "confirmations = -1\n"
        "shards = 2\n"
        "retry_base_s = 5.0\nretry_cap_s = 1.0\n"
        'tokens = [{ address = "0x12", symbol = "U SDC", decimals = 300, colour = 1 },\n'
        '          { symbol = "WETH" }]\n'
        "[feeds.evm.labels]\n"
        '"0x28c6c06298d514db089934071355e5743bf21d60" = "a"\n'
        '"0x28C6C06298D514DB089934071355E5743BF21D60" = "b"\n'
        '"hot" = ""\n'
    )
    expected = [
        "feeds.evm.chain: expected a chain name",
        "feeds.evm.tokens[0].colour: unknown key",
        "feeds.evm.tokens[0].address: expected a contract address",
        "feeds.evm.tokens[0].symbol: expected a token symbol",
        "feeds.evm.tokens[0].decimals: expected an integer from 0 to 255, got 300",
        "feeds.evm.tokens[1].address: missing",
        'feeds.evm.labels."0x28C6C06298D514DB089934071355E5743BF21D60": the same address is labelled twice',
        'feeds.evm.labels."hot": expected an address',
        'feeds.evm.labels."hot": expected a label',
        "feeds.evm.confirmations: expected an integer from 0 to 10000, got -1",
        "feeds.evm.shards: the EVM feed runs as one process per chain",
        "feeds.evm.retry_base_s: must not exceed retry_cap_s",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in found), (start, found)
    assert len(found) == len(expected), found


def test_cross_checks():
    assert problems("shards = 3") == [
        "feeds.evm.shards: the EVM feed runs as one process per chain; expected 1, got 3"]
    assert problems('shard = "1/2"') == ["feeds.evm.shard: the EVM feed runs as one process per chain; remove shard"]
    assert problems("retry_base_s = 5.0\nretry_cap_s = 1.0") == [
        "feeds.evm.retry_base_s: must not exceed retry_cap_s (1), got 5"]
    twice = problems('tokens = [{ address = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", symbol = "USDC" },\n'
                     '          { address = "0xA0B86991C6218B36C1D19D4A2E9EB0CE3606EB48", symbol = "USDC2" }]')
    assert twice == ['feeds.evm.tokens: "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48" is listed twice '
                     "(each token's address must be unique)"]
    assert problems("tokens = []") == ["feeds.evm.tokens: expected a non-empty list of token tables "
                                       "{address, symbol, decimals}, got []"]


def test_the_shipped_section_documents_every_key_with_its_default():
    text = SHIPPED.read_text()
    section = text[text.index("[feeds.evm]"):]
    for key in options_of(EvmFeedConfig):
        if key in ("tokens", "labels"):
            assert "[[feeds.evm.tokens]]" in section and "[feeds.evm.labels]" in section
            continue
        assert re.search(rf"^(# )?{key} = ", section, re.MULTILINE), f"{key} missing from the [feeds.evm] section"
    shipped = load_config(SHIPPED, environ={}).feeds["evm"]
    for key, spec in options_of(EvmFeedConfig).items():
        assert getattr(shipped, key) == spec.default, key
