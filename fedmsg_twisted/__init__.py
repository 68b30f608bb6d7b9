"""
fedmsg-twisted: the fedmsg message bus, on Twisted.

For scripts, the seed's blocking API works as in fedmsg::

    import fedmsg_twisted
    fedmsg_twisted.publish(topic="testing", modname="test", msg={"test": "Hello World"})

    config = fedmsg_twisted.config.load_config([], None)
    for name, endpoint, topic, msg in fedmsg_twisted.tail_messages(**config):
        print(topic, msg)

Twisted applications use L{fedmsg_twisted.publisher.PublisherService} and
L{fedmsg_twisted.subscriber.SubscriberService} instead.
"""

from fedmsg_twisted import config, encoding  # noqa: F401  (public submodules)

__version__ = "0.1.0"


def publish(topic=None, msg=None, modname=None, **kw):
    """
    Publish one message and block until it is handed to the bus.
    See L{fedmsg_twisted.blocking.publish}.
    """
    from fedmsg_twisted.blocking import publish as _publish

    return _publish(topic=topic, msg=msg, modname=modname, **kw)


def tail_messages(topic="", **settings):
    """
    Yield C{(name, endpoint, topic, msg)} for every message on the bus;
    C{settings} is a config, as in C{tail_messages(**config)}.
    See L{fedmsg_twisted.blocking.tail_messages}.
    """
    from fedmsg_twisted.blocking import tail_messages as _tail

    return _tail(topic=topic, **settings)
