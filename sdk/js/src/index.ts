/** Spoor's browser SDK. `import { spoor } from '@spoor/browser'; spoor.init({writeKey, host});` */

import { Spoor } from './analytics';

export { Spoor, VERSION } from './analytics';
export type { Message, Order, Product, Properties, SpoorError, SpoorOptions } from './types';

/** The page's client. */
export const spoor = new Spoor();
export default spoor;
