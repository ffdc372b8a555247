"""What skill handler processes import (never the server): the handler toolkit, the registry, workflows."""
