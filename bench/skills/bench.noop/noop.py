import json
import sys

print(json.dumps({"ok": True, "status": "success", "data": {"value": sys.argv[1]}}))
