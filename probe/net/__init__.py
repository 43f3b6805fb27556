"""rtnetlink: the message codec, link requests (XDP), and interfaces by name."""
