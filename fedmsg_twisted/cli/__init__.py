"""
The shell tools: C{fedmsg-logger} and C{fedmsg-tail}.
"""
