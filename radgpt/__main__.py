from radgpt.cli import main

raise SystemExit(main())
