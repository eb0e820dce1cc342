"""The online-round assets are built by a factory function; their descriptions must reach the UI."""

from assets.training.assets import ONLINE_ASSETS


def test_online_round_assets_have_descriptions():
    described = {k.to_user_string(): a.descriptions_by_key.get(k) or "" for a in ONLINE_ASSETS for k in a.keys}
    assert sorted(described) == sorted(
        f"{kind}_round_{k}" for k in (1, 2, 3) for kind in ("online_pairs", "online_generations", "online_scores", "dpo_online")
    )
    for name, text in described.items():
        k = name.rsplit("_", 1)[1]
        assert f"round {k}" in text.lower(), (name, text)
    # each round names the policy it starts from
    assert "from dpo_offline_model" in described["online_pairs_round_1"]
    assert "from dpo_online_round_2" in described["dpo_online_round_3"]
