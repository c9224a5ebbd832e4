import types

import pytest

import genlab
from genlab import plugins, registry
from genlab.errors import GenlabError


def make_plugin(name, *models, raises=None):
    """A module-like plugin object registering ``models`` (or raising ``raises``)."""
    module = types.ModuleType(name)

    @genlab.hookimpl
    def register_models(register):
        if raises:
            raise raises
        for m in models:
            register(m)

    module.register_models = register_models
    return module


class Fake(genlab.Model):
    model_id = "fake"
    family = "test"
    capabilities = frozenset({genlab.Capability.SAMPLE})


class FakeEncoder(genlab.Model):
    model_id = "fake-encoder"
    family = "test"
    capabilities = frozenset({genlab.Capability.ENCODE, genlab.Capability.DECODE})


def test_register_models_hook_registers_fakes(clean_registry, monkeypatch):
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    plugins.load_plugins()
    plugins.pm.register(make_plugin("fakes", Fake, FakeEncoder), name="fakes")
    assert set(genlab.get_models()) == {"fake", "fake-encoder"}
    assert set(genlab.get_models("sample")) == {"fake"}
    assert registry.registry().plugin_of["fake"] == "fakes"


def test_register_datasets_hook_includes_builtin_datasets(clean_registry, monkeypatch):
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    assert {"mnist-5k", "digits", "mnist", "fashion-mnist", "folder"} <= set(genlab.get_datasets())


def test_register_feature_extractors_hook_includes_bundled_ones(clean_registry, monkeypatch):
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    assert genlab.get_feature_extractor("mnist-classifier").name == "mnist-classifier"
    assert genlab.get_feature_extractor("inception-v3-tf").name == "inception-v3-tf"
    with pytest.raises(GenlabError, match="registered: inception-v3-tf, inception-v3-tf-clean, mnist-classifier"):
        genlab.get_feature_extractor("vgg")


def test_plugin_raising_in_hook_is_recorded_and_others_keep_working(clean_registry, monkeypatch):
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    plugins.load_plugins()
    plugins.pm.register(make_plugin("broken", raises=RuntimeError("boom")), name="broken")
    plugins.pm.register(make_plugin("good", Fake), name="good")
    assert list(genlab.get_models()) == ["fake"]
    failures = genlab.plugin_failures()
    assert [(f.name, f.reason) for f in failures] == [("broken", "register_models raised RuntimeError: boom")]


def test_entry_point_discovery_loads_a_third_party_plugin(fake_entry_points):
    fake_entry_points({"example": "genlab_example"})
    assert "uniform-noise" in genlab.get_models()
    assert registry.registry().plugin_of["uniform-noise"] == "example"
    assert "example" in plugins.plugin_names()


def test_plugin_failing_to_import_is_recorded(fake_entry_points):
    fake_entry_points({"missing": "genlab_no_such_module", "example": "genlab_example"})
    assert "uniform-noise" in genlab.get_models()
    (failure,) = genlab.plugin_failures()
    assert failure.name == "missing"
    assert "ModuleNotFoundError" in failure.reason and "genlab_no_such_module" in failure.reason


def test_env_var_restricts_which_plugins_load(fake_entry_points, monkeypatch):
    fake_entry_points({"example": "genlab_example", "missing": "genlab_no_such_module"})
    monkeypatch.setenv("GENLAB_PLUGINS", "example")
    assert list(genlab.get_models()) == ["uniform-noise"]
    assert genlab.plugin_failures() == []  # the broken one was never imported
    plugins.reset()
    registry.refresh()
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    assert genlab.get_models() == {}


def test_installed_in_tree_vae_is_found_through_its_entry_point(clean_registry, monkeypatch):
    monkeypatch.delenv("GENLAB_PLUGINS", raising=False)
    assert genlab.get_model_class("vae").family == "vae"
    assert registry.registry().plugin_of["vae"] == "vae"


def test_misspelled_hook_is_caught_by_check_pending(clean_registry, monkeypatch):
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    plugins.load_plugins()
    module = types.ModuleType("typo")

    @genlab.hookimpl
    def register_modles(register):  # noqa: ARG001
        pass

    module.register_modles = register_modles
    plugins.pm.register(module, name="typo")
    with pytest.raises(Exception, match="unknown hook 'register_modles'"):
        plugins.pm.check_pending()


def test_unknown_model_names_the_valid_choices(clean_registry, monkeypatch):
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    plugins.load_plugins()
    plugins.pm.register(make_plugin("fakes", Fake, FakeEncoder), name="fakes")
    with pytest.raises(genlab.UnknownModelError) as info:
        genlab.get_model("nope")
    assert str(info.value) == "unknown model 'nope'; registered models: fake, fake-encoder"


def test_duplicate_model_id_is_recorded_as_a_failure(clean_registry, monkeypatch):
    monkeypatch.setenv("GENLAB_PLUGINS", "")
    plugins.load_plugins()
    plugins.pm.register(make_plugin("first", Fake), name="first")
    plugins.pm.register(make_plugin("second", Fake), name="second")
    assert list(genlab.get_models()) == ["fake"]
    assert any("registered twice" in f.reason for f in genlab.plugin_failures())


def test_hooks_are_documented_and_each_has_a_test():
    import inspect
    import sys

    from genlab import hookspecs

    this_module = sys.modules[__name__]
    tests = [name for name in dir(this_module) if name.startswith("test_")]
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("register_"):
            continue
        assert fn.__doc__ and "\n" not in fn.__doc__.strip(), f"{name} needs a one-line docstring"
        assert any(name in t for t in tests), f"hook {name} has no test named after it"


def test_model_options_reject_unknown_fields_and_bad_ranges():
    from genlab_vae import VAE

    assert VAE.parse_options({"temperature": 0.5}).temperature == 0.5
    with pytest.raises(GenlabError, match="has no option 'steps'; valid options: temperature, output"):
        VAE.parse_options({"steps": 3})
    with pytest.raises(GenlabError, match=r"invalid option temperature=-1"):
        VAE.parse_options({"temperature": -1})


def test_capability_check_names_what_the_model_can_do():
    with pytest.raises(genlab.CapabilityError, match="model fake-encoder cannot sample; it can: decode, encode"):
        FakeEncoder().sample(1)
