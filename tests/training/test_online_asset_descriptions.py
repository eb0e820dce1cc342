"""The online-round assets are built by a factory function; their descriptions must reach the UI."""

from assets.training.assets import ONLINE_ASSETS


def test_online_round_assets_have_descriptions():
    described = {a.key.to_user_string(): a.descriptions_by_key.get(a.key) or "" for a in ONLINE_ASSETS}
    assert sorted(described) == sorted(
        [f"online_pairs_round_{k}" for k in (1, 2, 3)] + [f"dpo_online_round_{k}" for k in (1, 2, 3)]
    )
    for name, text in described.items():
        k = name.rsplit("_", 1)[1]
        assert f"round {k}" in text.lower(), (name, text)
    # each round names the policy it starts from
    assert "from dpo_offline_model" in described["online_pairs_round_1"]
    assert "from dpo_online_round_2" in described["dpo_online_round_3"]
