with source as (

    select * from {{ source('raw', 'order_items') }}

),

renamed as (

    select
        order_item_id,
        order_id,
        product_sku,
        quantity,
        {{ cents_to_dollars('unit_price_cents') }} as unit_price,
        {{ cents_to_dollars('quantity * unit_price_cents') }} as line_amount,
        _loaded_at

    from source

)

select * from renamed
