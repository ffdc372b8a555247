"""Running skill handlers: how they are invoked, their real interface, the runner and the zygote."""
