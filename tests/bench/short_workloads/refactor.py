def load(config):
    host = config.get("host")
    port = config.get("port")
    user = config.get("user")
    password = config.get("password")
    timeout = config.get("timeout")
    retries = config.get("retries")
    return host, port, user, password, timeout, retries


def load_with_defaults(config):
    host = config.get("host", "localhost")
    port = config.get("port", 8080)
