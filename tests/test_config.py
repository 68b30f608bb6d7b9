import os

from twisted.trial import unittest

from fedmsg_twisted import config


class DefaultsTests(unittest.TestCase):
    def setUp(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "FEDMSG_CONFIG"})

    def test_no_file_runs_on_loopback(self):
        cfg = config.load()
        self.assertEqual(cfg["relay_inbound"], ("tcp://127.0.0.1:2003",))
        self.assertEqual(cfg["endpoints"]["relay_outbound"], ("tcp://127.0.0.1:4001",))
        self.assertEqual(cfg.sources, ())

    def test_seed_spelling(self):
        cfg = config.load_config([], None)
        self.assertEqual(cfg["topic_prefix"], "org.fedoraproject")

    def test_read_only(self):
        cfg = config.load()
        self.assertRaises(TypeError, cfg["endpoints"].__setitem__, "x", ())
        self.assertFalse(hasattr(cfg, "__setitem__"))


class FileTests(unittest.TestCase):
    def write(self, name, text):
        d = self.mktemp()
        os.makedirs(d)
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def error(self, path, **kw):
        with self.assertRaises(config.ConfigError) as cm:
            config.load(path, **kw)
        return str(cm.exception)

    def test_toml(self):
        path = self.write("f.toml", 'topic_prefix = "org.debian"\nenvironment = "prod"\n'
                          '[endpoints]\nrelay_outbound = "tcp://127.0.0.1:9"\n')
        cfg = config.load(path)
        self.assertEqual(cfg["topic_prefix"], "org.debian")
        self.assertEqual(cfg["endpoints"]["relay_outbound"], ("tcp://127.0.0.1:9",))
        self.assertEqual(cfg["relay_inbound"], ("tcp://127.0.0.1:2003",))  # default kept
        self.assertEqual(cfg.sources, (path,))

    def test_env_variable(self):
        path = self.write("f.toml", 'environment = "stg"\n')
        self.patch(os, "environ", dict(os.environ, FEDMSG_CONFIG=path))
        self.assertEqual(config.load()["environment"], "stg")

    def test_unknown_key_suggests(self):
        path = self.write("f.toml", 'topic_prefx = "x"\n')
        msg = self.error(path)
        self.assertIn(path, msg)
        self.assertIn("'topic_prefx'", msg)
        self.assertIn("did you mean 'topic_prefix'", msg)

    def test_wrong_type(self):
        path = self.write("f.toml", "high_water_mark = \"lots\"\n")
        msg = self.error(path)
        self.assertIn(path, msg)
        self.assertIn("'high_water_mark' must be an integer", msg)

    def test_bad_values(self):
        for text, words in [
            ('environment = "production"\n', "'environment' must be one of"),
            ("high_water_mark = -1\n", "'high_water_mark' must be an integer >= 0"),
            ('relay_inbound = ["127.0.0.1:2003"]\n', "'relay_inbound' must be a zmq address"),
            ("[endpoints]\nx = 3\n", "'endpoints' must be a table whose value 'x'"),
            ("active = 1\n", "'active' must be true or false"),
            ('name = "nowhere"\n', "endpoints has no 'nowhere' entry"),
            ("zmq_enabled = false\n", "'zmq_enabled' must be true"),
        ]:
            self.assertIn(words, self.error(self.write("f.toml", text)), text)

    def test_not_toml(self):
        msg = self.error(self.write("f.toml", "this is = = not toml"))
        self.assertIn("not valid TOML", msg)

    def test_missing_and_unreadable(self):
        self.assertIn("does not exist", self.error("/nonexistent/fedmsg.toml"))
        path = self.write("f.toml", "")
        with open(path, "wb") as f:
            f.write(b"x = '\xff\xfe'\n")
        self.assertIn("not UTF-8", self.error(path))
        # A path that cannot be opened as a file (CI runs as root, so
        # permissions would not stop the read; a dangling .py path does).
        self.assertIn("cannot read", self.error(os.path.join(self.mktemp(), "gone.py")))

    def test_directory_error(self):
        d = self.mktemp()
        os.makedirs(d)
        self.assertIn("holds no", self.error(d))

    def test_fedmsg_py_file(self):
        path = self.write(
            "fedmsg-config.py",
            "import socket\nconfig = dict(topic_prefix='org.fedoraproject', environment='prod',\n"
            "    endpoints={'relay_outbound': 'tcp://127.0.0.1:4001', 'bodhi.%s' % 'web01': ['tcp://127.0.0.1:3000']},\n"
            "    relay_inbound='tcp://127.0.0.1:2003', stomp_uri='x', logging=dict(version=1),\n"
            "    **{'fedmsg.consumers.gateway.port': 9940})\n",
        )
        cfg = config.load(path)
        self.assertEqual(cfg["environment"], "prod")
        self.assertEqual(cfg["endpoints"]["bodhi.web01"], ("tcp://127.0.0.1:3000",))

    def test_fedmsg_d_directory_merges(self):
        d = self.mktemp()
        os.makedirs(d)
        with open(os.path.join(d, "base.py"), "w") as f:
            f.write("config = {'environment': 'stg', 'endpoints': {'a': ['tcp://127.0.0.1:1']}}\n")
        with open(os.path.join(d, "z.py"), "w") as f:
            f.write("config = {'endpoints': {'b': ['tcp://127.0.0.1:2']}}\n")
        cfg = config.load(d)
        self.assertEqual(set(cfg["endpoints"]), {"a", "b"})
        self.assertEqual(cfg["environment"], "stg")

    def test_fedmsg_py_wrong_type_still_named(self):
        path = self.write("x.py", "config = {'high_water_mark': 'x'}\n")
        msg = self.error(path)
        self.assertIn(path, msg)
        self.assertIn("high_water_mark", msg)

    def test_fedmsg_py_broken(self):
        self.assertIn("error while executing", self.error(self.write("x.py", "config = {\n")))
        self.assertIn("must define a dict named 'config'", self.error(self.write("y.py", "x = 1\n")))

    def test_overrides_checked(self):
        self.assertEqual(config.load(None, {"environment": "prod"})["environment"], "prod")
        with self.assertRaises(config.ConfigError) as cm:
            config.load(None, {"environment": "nope"})
        self.assertIn("<command line>", str(cm.exception))

    def test_replace(self):
        cfg = config.from_dict({}).replace(active=True)
        self.assertTrue(cfg["active"])
        self.assertRaises(config.ConfigError, config.from_dict({}).replace, active="yes")

    def test_rst_reference_lists_every_key(self):
        rst = config.to_rst()
        for key in config.KEYS:
            self.assertIn(f"``{key}``", rst)
