from mcp_secrets.launch import main

raise SystemExit(main())
