"""The subset of Fluent's GraphQL schema the product touches, as SDL (fact sheet section 9,
from a public snapshot of Fluent's schema; sections 4 and 6 for the rest).

Names, argument types and nullability follow the snapshot: a document is validated
against this schema as Fluent validates it (an unknown field, a wrong argument or a
variable declared with another type than its argument is an error). Types the snapshot
only names (``Retailer``, ``Customer``, ``FulfilmentChoice``, ``Address``, ``Fulfilment``,
``OrderItem``) carry a few plain fields. ``DateTime`` values are ISO 8601 strings and
``Json`` is any JSON value. :func:`fluent_schema` builds the schema once.
"""

from __future__ import annotations

from functools import cache

from graphql import GraphQLSchema, build_schema

FLUENT_SDL = '''
"""An ISO 8601 date-time, e.g. 2026-11-22T10:15:30.000Z."""
scalar DateTime

"""Any JSON value."""
scalar Json

type Query {
  inventoryPositions(
    ref: [String!]
    type: [String!]
    status: [String]
    productRef: [String!]
    locationRef: [String]
    onHand: [Int]
    catalogue: InventoryCatalogueKey
    createdOn: DateRange
    updatedOn: DateRange
    workflowRef: [String!]
    workflowVersion: [Int!]
    first: Int
    last: Int
    before: String
    after: String
  ): InventoryPositionConnection
  orders(
    ref: [String]
    type: [String!]
    status: [String]
    createdOn: DateRange
    updatedOn: DateRange
    first: Int
    last: Int
    before: String
    after: String
  ): OrderConnection
  order(id: ID, ref: String): Order
  orderById(id: ID!): Order
}

type Mutation {
  createOrder(input: CreateOrderInput): Order
}

input DateRange {
  from: DateTime
  to: DateTime
}

input InventoryCatalogueKey {
  ref: String!
}

type PageInfo {
  hasPreviousPage: Boolean
  hasNextPage: Boolean
}

type Attribute {
  name: String!
  type: String!
  value: Json!
}

type InventoryPositionConnection {
  edges: [InventoryPositionEdge]
  pageInfo: PageInfo
}

type InventoryPositionEdge {
  node: InventoryPosition
  cursor: String
}

type InventoryPosition {
  id: ID!
  ref: String!
  type: String!
  status: String
  workflowRef: String!
  workflowVersion: Int!
  createdOn: DateTime
  updatedOn: DateTime
  attributes: [Attribute]
  productRef: String!
  onHand: Int
  locationRef: String
  catalogue: InventoryCatalogue
  quantities(
    type: [String!]
    status: [String]
    first: Int
    after: String
  ): InventoryQuantityConnection
}

type InventoryCatalogue {
  id: ID!
  ref: String!
  type: String!
  status: String
  name: String
  workflowRef: String!
  workflowVersion: Int!
}

type InventoryQuantityConnection {
  edges: [InventoryQuantityEdge]
  pageInfo: PageInfo
}

type InventoryQuantityEdge {
  node: InventoryQuantity
  cursor: String
}

type InventoryQuantity {
  id: ID!
  ref: String!
  type: String!
  status: String
  workflowRef: String!
  workflowVersion: Int!
  quantity: Int
  condition: String
  expectedOn: DateTime
  storageAreaRef: String
  createdOn: DateTime
  updatedOn: DateTime
  attributes: [Attribute]
  position: InventoryPosition
}

type OrderConnection {
  edges: [OrderEdge]
  pageInfo: PageInfo
}

type OrderEdge {
  node: Order
  cursor: String
}

type Order {
  id: ID!
  ref: String
  type: String!
  status: String
  workflowRef: String!
  workflowVersion: Int!
  createdOn: DateTime
  updatedOn: DateTime
  attributes: [Attribute]
  retailer: Retailer
  customer: Customer
  totalPrice: Float
  totalTaxPrice: Float
  fulfilmentChoice: FulfilmentChoice
  items(first: Int, after: String): OrderItemConnection
  fulfilments(first: Int, after: String): FulfilmentConnection
}

type Retailer {
  id: ID!
  ref: String
}

type Customer {
  id: ID!
  ref: String
}

type OrderItemConnection {
  edges: [OrderItemEdge]
  pageInfo: PageInfo
}

type OrderItemEdge {
  node: OrderItem
  cursor: String
}

type OrderItem {
  id: ID!
  ref: String!
  productRef: String!
  productCatalogueRef: String
  quantity: Int!
  price: Float
  paidPrice: Float
  taxPrice: Float
  totalPrice: Float
  totalTaxPrice: Float
  currency: String
  taxType: String
  attributes: [Attribute]
  order: Order
}

type FulfilmentChoice {
  id: ID!
  deliveryType: String!
  fulfilmentType: String
  pickupLocationRef: String
  deliveryAddress: Address
  currency: String
  deliveryInstruction: String
  fulfilmentPrice: Float
  fulfilmentTaxPrice: Float
}

type Address {
  id: ID!
  ref: String
  name: String
  companyName: String
  street: String
  city: String
  state: String
  postcode: String
  region: String
  country: String
  latitude: Float
  longitude: Float
  timeZone: String
}

type FulfilmentConnection {
  edges: [FulfilmentEdge]
  pageInfo: PageInfo
}

type FulfilmentEdge {
  node: Fulfilment
  cursor: String
}

type Fulfilment {
  id: ID!
  ref: String
  type: String
  status: String
  deliveryType: String
  createdOn: DateTime
}

input CreateOrderInput {
  ref: String!
  type: String!
  retailer: RetailerId!
  customer: CustomerId!
  items: [CreateOrderItemWithOrderInput]!
  attributes: [AttributeInput]
  totalPrice: Float
  totalTaxPrice: Float
  fulfilmentChoice: CreateFulfilmentChoiceWithOrderInput
}

input CreateOrderItemWithOrderInput {
  ref: String!
  productRef: String!
  quantity: Int!
  productCatalogueRef: String
  price: Float
  paidPrice: Float
  taxPrice: Float
  totalPrice: Float
  totalTaxPrice: Float
  currency: String
  taxType: String
  attributes: [AttributeInput]
}

input CreateFulfilmentChoiceWithOrderInput {
  deliveryType: String!
  fulfilmentType: String
  pickupLocationRef: String
  deliveryAddress: CreateAddressWithFulfilmentChoiceInput
  currency: String
  deliveryInstruction: String
  fulfilmentPrice: Float
  fulfilmentTaxPrice: Float
}

input CreateAddressWithFulfilmentChoiceInput {
  ref: String!
  name: String
  companyName: String
  street: String
  city: String
  state: String
  postcode: String
  region: String
  country: String
  latitude: Float
  longitude: Float
  timeZone: String
}

input RetailerId {
  id: ID!
}

input CustomerId {
  id: ID!
}

input AttributeInput {
  name: String!
  type: String!
  value: Json!
}
'''


@cache
def fluent_schema() -> GraphQLSchema:
    """The schema built from :data:`FLUENT_SDL`, once. It holds no resolvers: the executor
    dispatches fields to :mod:`.resolvers` and never changes this object."""
    return build_schema(FLUENT_SDL)
