"""
The shipped git post-receive hook, run by a real git push into a real bare
repository, publishing through the real fedmsg-logger and relay.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.internet import defer, threads
from twisted.trial import unittest

import fedmsg_twisted
from fedmsg_twisted import config
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.subscriber import SubscriberService
from tests.util import free_port, tcp, wait_for

HOOK = os.path.join(os.path.dirname(fedmsg_twisted.__file__), "hooks", "post-receive")


def run(*argv: str, cwd: str, env: dict) -> str:
    out = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, check=True)
    return out.stdout.decode() + out.stderr.decode()


class PostReceiveHookTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        if shutil.which("git") is None:
            raise unittest.SkipTest("git is not installed")
        inbound, outbound = free_port(), free_port()
        self.cfg = config.from_dict({
            "topic_prefix": "org.debian",
            "relay_inbound": [tcp(inbound)],
            "endpoints": {"relay_outbound": [tcp(outbound)]},
            "post_init_sleep": 5.0,
            "timeout": 10.0,
        })
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.cfg_path = os.path.join(base, "fedmsg.toml")
        with open(self.cfg_path, "w") as f:
            f.write(f'topic_prefix = "org.debian"\nrelay_inbound = ["{tcp(inbound)}"]\n'
                    f'post_init_sleep = 5.0\ntimeout = 10.0\n'
                    f'[endpoints]\nrelay_outbound = ["{tcp(outbound)}"]\n')
        self.env = {
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "HOME": base,
            "FEDMSG_CONFIG": self.cfg_path,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Zoë Ünal",
            "GIT_AUTHOR_EMAIL": "zoe@example.org",
            "GIT_COMMITTER_NAME": "Zoë Ünal",
            "GIT_COMMITTER_EMAIL": "zoe@example.org",
            "USER": "zoe",
            "LANG": "C.UTF-8",
        }
        self.bare = os.path.join(base, "foo.git")
        self.work = os.path.join(base, "work")
        run("git", "init", "-q", "--bare", "-b", "main", self.bare, cwd=base, env=self.env)
        os.symlink(HOOK, os.path.join(self.bare, "hooks", "post-receive"))
        run("git", "init", "-q", "-b", "main", self.work, cwd=base, env=self.env)
        run("git", "remote", "add", "origin", self.bare, cwd=self.work, env=self.env)

        relay = RelayService(self.cfg)
        relay.startService()
        self.addCleanup(relay.stopService)
        self.got: list[tuple[str, dict]] = []
        sub = SubscriberService(self.cfg, lambda n, e, t, m: self.got.append((t, m)))
        sub.startService()
        self.addCleanup(sub.stopService)
        # the relay forwards only to subscribers already there
        return defer.Deferred.fromCoroutine(wait_for(relay.has_subscriber, what="subscriber on the relay"))

    def commit(self, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            with open(os.path.join(self.work, "file.txt"), "a") as f:
                f.write(f"line {i}\n")
            run("git", "add", "file.txt", cwd=self.work, env=self.env)
            run("git", "commit", "-q", "-m", f"Change number {i}: façade", "-m", "body text", cwd=self.work,
                env=self.env)

    def push(self, *args: str):
        return threads.deferToThread(run, "git", "push", "-q", "origin", *args, cwd=self.work, env=self.env)

    def rev(self, what: str) -> str:
        return run("git", "rev-parse", what, cwd=self.work, env=self.env).strip()

    async def test_push_publishes_commits(self) -> None:
        self.assertTrue(os.access(HOOK, os.X_OK), "the hook must be executable")
        await threads.deferToThread(self.commit, 3)
        await self.push("main")
        await wait_for(lambda: self.got, what="the push message")
        topic, envelope = self.got[0]
        self.assertEqual(topic, "org.debian.dev.git.receive")
        msg = envelope["msg"]
        self.assertEqual(msg["repository"], "foo")
        self.assertEqual(msg["ref"], "refs/heads/main")
        self.assertEqual(msg["branch"], "main")
        self.assertEqual(msg["old"], "0" * 40)
        self.assertEqual(msg["new"], self.rev("main"))
        self.assertTrue(msg["created"])
        self.assertEqual(msg["total_commits"], 3)
        self.assertEqual(msg["omitted_commits"], 0)
        self.assertEqual([c["summary"] for c in msg["commits"]],
                         [f"Change number {i}: façade" for i in range(3)])
        self.assertEqual(msg["commits"][0]["author"], "Zoë Ünal")
        self.assertEqual(msg["commits"][-1]["id"], self.rev("main"))

        # An update: only the new commits, from old to new.
        old = self.rev("main")
        await threads.deferToThread(self.commit, 2, 3)
        await self.push("main")
        await wait_for(lambda: len(self.got) == 2, what="the second push")
        msg = self.got[1][1]["msg"]
        self.assertEqual((msg["old"], msg["new"]), (old, self.rev("main")))
        self.assertFalse(msg["created"])
        self.assertFalse(msg["forced"])
        self.assertEqual([c["summary"] for c in msg["commits"]],
                         ["Change number 3: façade", "Change number 4: façade"])

    async def test_commit_count_is_bounded(self) -> None:
        run("git", "config", "fedmsg.maxcommits", "4", cwd=self.bare, env=self.env)
        await threads.deferToThread(self.commit, 7)
        await self.push("main")
        await wait_for(lambda: self.got, what="the push message")
        msg = self.got[0][1]["msg"]
        self.assertEqual(msg["total_commits"], 7)
        self.assertEqual(msg["omitted_commits"], 3)
        self.assertEqual([c["summary"] for c in msg["commits"]],
                         [f"Change number {i}: façade" for i in range(3, 7)])

    async def test_new_branch_and_deletion(self) -> None:
        await threads.deferToThread(self.commit, 2)
        await self.push("main")
        await wait_for(lambda: self.got, what="main")
        run("git", "checkout", "-q", "-b", "topic", cwd=self.work, env=self.env)
        await threads.deferToThread(self.commit, 1, 2)
        await self.push("topic")
        await wait_for(lambda: len(self.got) == 2, what="topic branch")
        msg = self.got[1][1]["msg"]
        self.assertTrue(msg["created"])
        self.assertEqual(msg["branch"], "topic")
        # only what main did not already have
        self.assertEqual([c["summary"] for c in msg["commits"]], ["Change number 2: façade"])
        run("git", "tag", "-a", "-m", "release", "v1.0", cwd=self.work, env=self.env)
        await self.push("v1.0")
        await wait_for(lambda: len(self.got) == 3, what="tag")
        msg = self.got[2][1]["msg"]
        self.assertEqual((msg["ref"], msg["branch"], msg["created"]), ("refs/tags/v1.0", "v1.0", True))
        self.assertEqual(msg["commits"], [])  # the tagged commit was already pushed on topic
        await self.push(":topic")
        await wait_for(lambda: len(self.got) == 4, what="deletion")
        msg = self.got[3][1]["msg"]
        self.assertTrue(msg["deleted"])
        self.assertEqual(msg["commits"], [])

    async def test_push_succeeds_when_the_bus_is_down(self) -> None:
        down = os.path.join(os.path.dirname(self.cfg_path), "down.toml")
        with open(down, "w") as f:
            f.write(f'relay_inbound = ["{tcp(free_port())}"]\npost_init_sleep = 0.2\ntimeout = 0.5\n')
        self.env["FEDMSG_CONFIG"] = down
        await threads.deferToThread(self.commit, 1)
        out = await self.push("main")
        self.assertIn("fedmsg post-receive: refs/heads/main not published", out)
        self.assertEqual(self.rev("main"), run("git", "rev-parse", "main", cwd=self.bare, env=self.env).strip())
