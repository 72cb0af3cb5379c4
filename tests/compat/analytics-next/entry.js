// What a site that installs @segment/analytics-next from npm ships: the package's own entry point.
import { AnalyticsBrowser } from '@segment/analytics-next';

window.AnalyticsBrowser = AnalyticsBrowser;
