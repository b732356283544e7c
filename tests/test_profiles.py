import json

import pytest

from apudae_tf import profiles
from apudae_tf.errors import ApudaeError


def test_a_folder_profile_lacking_a_later_field_takes_the_builtin_value_not_the_class_default(tmp_path,
                                                                                              monkeypatch):
    # a model folder trained before `correct_only` and `checkpoint_steps` existed records neither
    monkeypatch.setitem(profiles.REGISTRY, "imagenet", profiles.REGISTRY["imagenet"])
    old = profiles.get("imagenet").to_json()
    for k in ("correct_only", "checkpoint_steps", "tfds_splits"):
        del old[k]
    (tmp_path / profiles.PROFILE_FILE).write_text(json.dumps(old))
    p = profiles.from_folder(str(tmp_path), "imagenet")
    assert p.correct_only and p.checkpoint_steps and p.tfds_splits == ("imagenet2012", "train", "validation")
    assert profiles.get("imagenet") is p
    # what the file does say wins
    (tmp_path / profiles.PROFILE_FILE).write_text(json.dumps({**old, "correct_only": False, "sigma_max": 0.2}))
    p = profiles.from_folder(str(tmp_path), "imagenet")
    assert not p.correct_only and p.sigma_max == 0.2 and p.checkpoint_steps


def test_a_users_profile_lacking_fields_gets_the_class_defaults_and_a_wrong_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "REGISTRY", dict(profiles.REGISTRY))
    (tmp_path / profiles.PROFILE_FILE).write_text(json.dumps(
        {"name": "mine", "eps": 0.1, "steps": 5, "step": 0.02, "sigma_max": 0.2}))
    p = profiles.from_folder(str(tmp_path))
    assert not p.correct_only and p.columns == profiles.Profile.columns and p.threat.eps == 0.1
    with pytest.raises(ApudaeError, match="is the profile of dataset 'mine', not 'imagenet'"):
        profiles.from_folder(str(tmp_path), "imagenet")


def test_the_certify_batch_is_the_profiles_and_an_older_profile_json_still_loads():
    """`certify` draws ImageNet's copies 50 at a time (1000 at 224 px took 14 GiB); a profile.json written before
    the field existed loads with the default."""
    from apudae_tf import profiles

    assert profiles.REGISTRY["imagenet"].certify_batch == 50
    assert profiles.REGISTRY["mnist"].certify_batch == 1000
    d = profiles.REGISTRY["imagenet"].to_json()
    del d["certify_batch"]
    assert profiles.from_json(d, "profile.json").certify_batch == 50  # the built-in entry's
    d["name"] = "my-images"
    assert profiles.from_json(d, "profile.json").certify_batch == 1000
