from agent.collector.cli import main

raise SystemExit(main())
